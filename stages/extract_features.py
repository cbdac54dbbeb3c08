"""DVC stage `extract_features`: run the frozen backbone once per image and cache the pooled features."""

from imgclf import cli, features


def main() -> None:
    cli.stage(__doc__, {"data": "prepared data directory", "out": "features directory to write"},
              lambda params, args: features.extract_features(params, prepared_dir=args.data, out_dir=args.out))


if __name__ == "__main__":
    main()
