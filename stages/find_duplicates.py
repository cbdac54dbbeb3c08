"""DVC stage `find_duplicates`: test images with a copy in training, and the training images to leave out."""

from imgclf import stage_runner

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("duplicates.similarity_threshold", "duplicates.policy")


def run(params, args) -> None:
    from imgclf.data import find_duplicates  # after stage_runner has read the prepared data, as in every stage

    find_duplicates.run(params, prepared_dir=args.data, features_dir=args.features, out_dir=args.out)


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, {"data": "prepared data directory", "features": "features directory",
                                         "out": "duplicates directory to write"},
                       run, prepared=("data",))


if __name__ == "__main__":
    main()
