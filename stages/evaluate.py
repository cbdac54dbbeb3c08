"""DVC stage `evaluate`: both models on the same test split; metrics, calibration, confusion, predictions."""

from imgclf import stage_runner
from imgclf.evaluation import evaluate

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "deterministic", "evaluate", "mlflow.experiment")


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, {"data": "prepared data directory", "scratch": "scratch model directory",
                                         "transfer": "transfer model directory",
                                         "out": "evaluation directory to write"},
                       lambda params, args: evaluate.run(
                           params, prepared_dir=args.data,
                           model_dirs={"scratch": args.scratch, "transfer": args.transfer},
                           out_dir=args.out, project_root=stage_runner.project_root()))


if __name__ == "__main__":
    main()
