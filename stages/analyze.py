"""DVC stage `analyze`: is one model really better, where does each fail, and one HTML report of it all."""

from imgclf import stage_runner

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "analysis")


def run(params, args) -> None:
    from imgclf.evaluation import analysis  # MLflow, pandas, matplotlib: after stage_runner has read the inputs

    analysis.run(params, prepared_dir=args.data, evaluate_dir=args.evaluation,
                 history_paths={"scratch": args.scratch_history, "transfer": args.transfer_history},
                 out_dir=args.out, project_root=stage_runner.project_root(), duplicates_dir=args.duplicates)


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, {"data": "prepared data directory",
                                         "evaluation": "evaluate stage output directory",
                                         "scratch_history": "history.csv of the scratch model",
                                         "transfer_history": "history.csv of the transfer model",
                                         "duplicates": "find_duplicates output directory (optional)",
                                         "out": "analysis directory to write"},
                       run, optional=("duplicates",), prepared=("data",))


if __name__ == "__main__":
    main()
