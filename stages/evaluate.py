"""DVC stage `evaluate`: both models on the same test split; metrics, calibration, confusion, predictions."""

from imgclf import stage_runner

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "deterministic", "evaluate", "mlflow.experiment")


def run(params, args) -> None:
    from imgclf.evaluation import evaluate  # TensorFlow, Keras, MLflow: after stage_runner has read the inputs

    evaluate.run(params, prepared_dir=args.data, model_dirs={"scratch": args.scratch, "transfer": args.transfer},
                 out_dir=args.out, project_root=stage_runner.project_root())


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, {"data": "prepared data directory", "scratch": "scratch model directory",
                                         "transfer": "transfer model directory",
                                         "out": "evaluation directory to write"},
                       run, prepared=("data",))


if __name__ == "__main__":
    main()
