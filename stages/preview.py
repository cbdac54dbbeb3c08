"""DVC stage `preview`: the prepared data's class distribution and a grid of augmented training images."""

from imgclf import stage_runner

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "augment")


PATHS = {"data": "prepared data directory (preprocess stage output)", "out": "preview directory to write"}


def run(params, args) -> None:
    from imgclf.data import preview  # TensorFlow (the augmentation layers): after stage_runner read the prepared data

    preview.run(params, prepared_dir=args.data, out_dir=args.out)


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, PATHS, run, prepared=("data",))


if __name__ == "__main__":
    main()
