"""DVC stage `analyze`: which model is right on each test image, and galleries of where they fail."""

from imgclf import analysis, cli


def main() -> None:
    cli.stage(__doc__, {"data": "prepared data directory", "evaluation": "evaluate stage output directory",
                        "out": "analysis directory to write"},
              lambda params, args: analysis.run(params, prepared_dir=args.data, evaluate_dir=args.evaluation,
                                                out_dir=args.out))


if __name__ == "__main__":
    main()
