"""DVC stage `preprocess`: decode, split and shard the raw images; write meta and manifest."""

from imgclf import stage_runner
from imgclf.data import preprocess

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "data.val_fraction", "data.test_fraction", "data.max_per_class", "preprocess")


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, {"raw": "raw data directory (download stage output)",
                                         "out": "prepared data directory to write"},
                       lambda params, args: preprocess.run(params, raw_dir=args.raw, out_dir=args.out))


if __name__ == "__main__":
    main()
