"""DVC stage `extract_features`: run the frozen backbone once per image and cache the pooled features."""

from imgclf import stage_runner

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "deterministic", "transfer.backbone", "transfer.weights", "transfer.input_size",
          "transfer.feature_batch_size", "transfer.augment_copies",
          "augment.enabled", "augment.flip", "augment.translate", "augment.interpolation",
          "augment.rotate", "augment.zoom",
          "augment.contrast")


def run(params, args) -> None:
    from imgclf.training import features  # TensorFlow and Keras: after stage_runner has read the prepared data

    features.extract_features(params, prepared_dir=args.data, backbone_file=args.backbone, out_dir=args.out)


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, {"data": "prepared data directory",
                                         "backbone": "check_params' resolution of transfer.backbone (backbone.json)",
                                         "out": "features directory to write"},
                       run, prepared=("data",))


if __name__ == "__main__":
    main()
