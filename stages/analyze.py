"""DVC stage `analyze`: is one model really better, where does each fail, and one HTML report of it all."""

from imgclf import analysis, cli


def main() -> None:
    cli.stage(__doc__, {"data": "prepared data directory", "evaluation": "evaluate stage output directory",
                        "scratch_history": "history.csv of the scratch model",
                        "transfer_history": "history.csv of the transfer model",
                        "out": "analysis directory to write"},
              lambda params, args: analysis.run(
                  params, prepared_dir=args.data, evaluate_dir=args.evaluation,
                  history_paths={"scratch": args.scratch_history, "transfer": args.transfer_history},
                  out_dir=args.out, project_root=cli.project_root()))


if __name__ == "__main__":
    main()
