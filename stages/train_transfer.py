"""DVC stage `train_transfer`: train the new head on cached backbone features; save the whole model as .keras."""

from imgclf import cli, transfer


def main() -> None:
    cli.stage(__doc__, {"data": "prepared data directory", "features": "cached features directory",
                        "out": "model directory to write"},
              lambda params, args: transfer.train_transfer(params, prepared_dir=args.data,
                                                           features_dir=args.features, out_dir=args.out,
                                                           project_root=cli.project_root()))


if __name__ == "__main__":
    main()
