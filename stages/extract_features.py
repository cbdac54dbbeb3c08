"""DVC stage `extract_features`: run the frozen backbone once per image and cache the pooled features."""

from imgclf import stage_runner
from imgclf.training import features

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "deterministic", "transfer.backbone", "transfer.weights", "transfer.input_size",
          "transfer.feature_batch_size", "transfer.augment_copies",
          "augment.enabled", "augment.flip", "augment.translate", "augment.interpolation",
          "augment.rotate", "augment.zoom",
          "augment.contrast")


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, {"data": "prepared data directory",
                                         "backbone": "check_params' resolution of transfer.backbone (backbone.json)",
                                         "out": "features directory to write"},
                       lambda params, args: features.extract_features(params, prepared_dir=args.data,
                                                                      backbone_file=args.backbone, out_dir=args.out))


if __name__ == "__main__":
    main()
