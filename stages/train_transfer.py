"""DVC stage `train_transfer`: train the new head on cached backbone features; save the whole model as .keras."""

from imgclf import stage_runner
from imgclf.training import distributed

# The params keys this stage reads: dvc.yaml lists exactly these (tests/code/test_deps.py), stage_runner checks them.
PARAMS = ("seed", "deterministic",
          "augment.enabled", "augment.flip", "augment.translate", "augment.interpolation",
          "augment.rotate", "augment.zoom",
          "augment.contrast", "training", "mlflow.experiment", "transfer.head_dropout",
          "transfer.head_units", "transfer.optimizer", "transfer.learning_rate", "transfer.weight_decay",
          "transfer.momentum", "transfer.label_smoothing", "transfer.lr_schedule", "transfer.lr_step_epochs",
          "transfer.lr_decay_factor", "transfer.lr_plateau_patience", "transfer.early_stopping",
          "transfer.early_stopping_patience", "transfer.early_stopping_min_delta", "transfer.restore_best_weights",
          "transfer.checkpoint_best", "transfer.epochs", "transfer.batch_size", "transfer.finetune_epochs",
          "transfer.finetune_layers", "transfer.finetune_learning_rate", "transfer.nesterov", "transfer.warmup_epochs")


def main() -> None:
    stage_runner.stage(__doc__, PARAMS, {"data": "prepared data directory", "features": "cached features directory",
                                         "exclude": "training ids to leave out (find_duplicates' exclude.json)",
                                         "out": "model directory to write"},
                       train, optional=("exclude",), prepared=("data",))


def train(params, args) -> None:
    if distributed.launched(params.training, args.out):  # as in stages/train_scratch.py: no TensorFlow in the launcher
        return
    from imgclf.training import transfer

    transfer.train_transfer(params, prepared_dir=args.data, features_dir=args.features, out_dir=args.out,
                            project_root=stage_runner.project_root(), exclude_path=args.exclude)


if __name__ == "__main__":
    main()
