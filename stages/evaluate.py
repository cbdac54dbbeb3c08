"""DVC stage `evaluate`: both models on the same test split; metrics, calibration, confusion, predictions."""

from imgclf import cli, evaluate


def main() -> None:
    cli.stage(__doc__, {"data": "prepared data directory", "scratch": "scratch model directory",
                        "transfer": "transfer model directory", "out": "evaluation directory to write"},
              lambda params, args: evaluate.run(params, prepared_dir=args.data,
                                                model_dirs={"scratch": args.scratch, "transfer": args.transfer},
                                                out_dir=args.out, project_root=cli.project_root()))


if __name__ == "__main__":
    main()
