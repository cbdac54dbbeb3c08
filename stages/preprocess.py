"""DVC stage `preprocess`: decode, split and shard the raw images; write meta, manifest and previews."""

from imgclf import cli, preprocess


def main() -> None:
    cli.stage(__doc__, {"raw": "raw data directory (download stage output)",
                        "out": "prepared data directory to write"},
              lambda params, args: preprocess.run(params, raw_dir=args.raw, out_dir=args.out))


if __name__ == "__main__":
    main()
