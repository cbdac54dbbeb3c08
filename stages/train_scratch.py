"""DVC stage `train_scratch`: train the seed CNN from scratch and save it as .keras."""

from imgclf import cli, train


def main() -> None:
    cli.stage(__doc__, {"data": "prepared data directory", "out": "model directory to write"},
              lambda params, args: train.train_scratch(params, prepared_dir=args.data, out_dir=args.out,
                                                       project_root=cli.project_root()))


if __name__ == "__main__":
    main()
