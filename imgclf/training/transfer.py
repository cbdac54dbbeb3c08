"""Transfer learning with a frozen ImageNet backbone that runs once per image, then optional fine-tuning.

Phase 1 (fastai's `freeze`): the features stage pushes every prepared image through the frozen backbone
(BatchNorm in inference mode) a single time and caches the pooled features, a DVC output; the transfer
stage fits the new head on those cached features, so no head epoch, and no change to head params, ever
runs the backbone again. With augmentation on, `transfer.augment_copies` extra augmented views of each
training image are extracted once too, and the head trains on all views.

Phase 2 (`unfreeze`, when `transfer.finetune_epochs` > 0): the head is joined to the backbone, the top
`finetune_layers` backbone layers (or all) are unfrozen with BatchNorm kept frozen, and the whole model is
trained on images at `finetune_learning_rate`; its epochs continue the same step axis in the same run.

With `training.distribute: multi_worker` both phases train data-parallel in several processes, as the scratch
training does (imgclf/training/distributed.py): each process fits the head on its shard of the cached features
and fine-tunes on its shard of the images, `batch_size / workers` per step; the features stage still runs the
backbone once per image, in one process.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import mlflow

from imgclf import artifacts, fileio, model_io, progress
from imgclf.config import Params, TransferConfig
from imgclf.data import augment, exclusions, tfdata
from imgclf.tracking import runs
from imgclf.training import distributed, fitting, recipe, transfer_model

log = logging.getLogger(__name__)

HEAD_PHASE, FINETUNE_PHASE = "head", "finetune"


def unfreeze(extractor: keras.Model, layers: int) -> int:
    """Make the top `layers` backbone layers (all when 0) trainable, BatchNorm excepted; return how many."""
    backbone = next(layer for layer in extractor.layers if isinstance(layer, keras.Model))
    backbone.trainable = True
    candidates = backbone.layers[-layers:] if layers else backbone.layers
    for layer in backbone.layers:
        layer.trainable = layer in candidates and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in backbone.layers if layer.trainable and layer.weights)


def train_transfer(params: Params, *, prepared_dir: Path, features_dir: Path, out_dir: Path,
                   project_root: Path, exclude_path: Path | None = None) -> dict:
    """The transfer stage: fit the head on cached features (less the training ids in `exclude_path`), optionally
    fine-tune, save `model.keras`."""
    if distributed.launched(params.training, out_dir):  # multi_worker: the workers trained (training/distributed.py)
        return fileio.read_json(Path(out_dir) / artifacts.SUMMARY_FILE)
    shard = distributed.join(params.training)  # None unless this is a multi_worker worker
    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    recipe.set_precision(params.training.precision)
    meta = artifacts.read_prepared_meta(prepared_dir)
    features_meta = fileio.read_json(Path(features_dir) / artifacts.FEATURES_META)
    num_classes, config, out_dir = meta.num_classes, params.transfer, Path(out_dir)
    excluded = exclusions.read(exclude_path)
    train_x, train_y = exclusions.kept_views(*recipe.training_features(features_dir), train_count=meta.counts["train"],
                                             excluded=excluded)
    val_x, val_y = recipe.load_features(features_dir, "val")
    out_dir = distributed.outputs(shard, out_dir)  # the chief's is the stage's
    resume = fitting.ResumeState(out_dir / artifacts.RESUME_DIR, enabled=params.training.resume,
                                 fingerprint={**recipe.fingerprint(params, meta, "augment", "transfer", "training"),
                                              "features": features_meta,
                                              **({"excluded": sorted(excluded)} if excluded else {})})
    head = transfer_model.build_head(config, train_features=train_x, num_classes=num_classes)
    head_weights = resume.phase_dir(HEAD_PHASE) / "head.weights.h5"
    logged = runs.stage_params(params, "data", "preprocess", "augment", "transfer", "training")
    batch_size = shard.batch_size(config.batch_size) if shard else config.batch_size  # per process
    val_data = tfdata.make_dataset(prepared_dir, "val", image_shape=meta.image_shape, num_classes=num_classes,
                                   batch_size=batch_size, example_count=meta.counts["val"])
    with runs.training_run(params, model="transfer", project_root=project_root, out_dir=out_dir,
                               data_sha256=meta.source_sha256, logged_params=logged,
                               run_id=resume.run_id()) as run:
        resume.remember_run(run.info.run_id)
        mlflow.log_params({"feature_dim": int(train_x.shape[1]), "train_features": len(train_y),
                           "backbone_parameters": features_meta["backbone_parameters"]})
        history_paths = [out_dir / artifacts.HISTORY_FILE]
        if distributed.everywhere(shard, resume.phase_done(HEAD_PHASE)):
            head.load_weights(head_weights)
            rows = artifacts.read_history(resume.history_path(HEAD_PHASE))
            log.info("head already trained (resumed run); going on to fine-tuning")
        else:
            rows = _fit_head(head, config, params, resume, history_paths, run.info.run_id, project_root, shard,
                             train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, num_classes=num_classes)
            head.save_weights(head_weights)
            resume.mark_phase_done(HEAD_PHASE)
        extractor = model_io.load_model(Path(features_dir) / artifacts.EXTRACTOR_FILE,
                                      remedy="extract the features again (dvc repro --force extract_features)")
        model = transfer_model.assemble_transfer_model(extractor, head)
        if config.finetune_epochs:
            rows = _finetune(model, extractor, params, resume, history_paths, rows, shard, meta=meta,
                             prepared_dir=prepared_dir, val_data=val_data, run_id=run.info.run_id,
                             project_root=project_root, excluded=excluded)
        model_io.save_model(model, out_dir / artifacts.MODEL_FILE)  # every worker: saving is a collective
        distributed.leave(shard)
        summary = recipe.summarize(rows, model)
        summary["finetune_epochs"] = sum(1 for row in rows if row.get("phase") == FINETUNE_PHASE)
        mlflow.log_dict(summary, artifacts.SUMMARY_FILE)
    fileio.atomic_write_json(out_dir / artifacts.SUMMARY_FILE, summary)
    resume.clear()
    distributed.finish(shard)  # a worker ends here
    return summary


def _fit_head(head, config: TransferConfig, params: Params, resume: fitting.ResumeState, history_paths, run_id,
              project_root, shard: distributed.Shard | None, *, train_x, train_y, val_x, val_y,
              num_classes) -> list[dict]:
    steps = (shard.steps_per_epoch(len(train_y), config.batch_size) if shard
             else -(-len(train_y) // config.batch_size))
    recipe.compile_model(head, config, steps_per_epoch=steps, jit_compile=params.training.jit_compile)
    history = resume.history(HEAD_PHASE)
    logger = fitting.EpochLogger([*history_paths, resume.history_path(HEAD_PHASE)], examples_per_epoch=len(train_y),
                                 rows=history, phase=HEAD_PHASE)
    callbacks = recipe.training_callbacks(params, config, resume=resume, phase=HEAD_PHASE, logger=logger,
                                          history=history, model_name="transfer", run_id=run_id,
                                          project_root=project_root)
    train_targets = keras.utils.to_categorical(train_y, num_classes)
    validation = (val_x, keras.utils.to_categorical(val_y, num_classes))
    if shard is None:
        head.fit(train_x, train_targets, batch_size=config.batch_size, validation_data=validation,
                 epochs=config.epochs, shuffle=True, callbacks=callbacks, verbose=progress.keras_verbose())
    else:  # this process's shard of the features, `batch_size / workers` at a step; validation whole everywhere
        first_epoch = distributed.agreed_start(shard, resume, HEAD_PHASE)
        batch_size = shard.batch_size(config.batch_size)
        train_data = tfdata.array_dataset(train_x, train_targets, batch_size=batch_size, seed=params.seed,
                                          epochs=config.epochs, first_epoch=first_epoch, shard=shard.as_tuple())
        head.fit(train_data, steps_per_epoch=steps, validation_data=validation, validation_batch_size=batch_size,
                 epochs=config.epochs, shuffle=False, callbacks=callbacks, verbose=progress.keras_verbose())
    fitting.restore_best(head, config, resume.phase_dir(HEAD_PHASE))
    return logger.rows


def _finetune(model, extractor, params: Params, resume: fitting.ResumeState, history_paths, head_rows,
              shard: distributed.Shard | None, *, meta,
              prepared_dir, val_data, run_id, project_root, excluded: frozenset[int] = frozenset()) -> list[dict]:
    """Phase 2: unfreeze and train end to end on images, continuing the head's epoch numbering."""
    config = params.transfer
    unfrozen = unfreeze(extractor, config.finetune_layers)
    mlflow.log_param("finetune_trainable_layers", unfrozen)
    start = len(head_rows)
    total = start + config.finetune_epochs
    first_epoch = max(start, distributed.agreed_start(shard, resume, FINETUNE_PHASE))
    train_count = meta.counts["train"] - len(excluded)
    steps = (shard.steps_per_epoch(train_count, config.batch_size) if shard
             else tfdata.steps_per_epoch(train_count, config.batch_size))
    augmentation = augment.build_augmentation(params.augment, seed=params.seed) if params.augment.enabled else None
    train_data = tfdata.make_dataset(prepared_dir, "train", image_shape=meta.image_shape,
                                     num_classes=meta.num_classes,
                                     batch_size=shard.batch_size(config.batch_size) if shard else config.batch_size,
                                     training=True, seed=params.seed, augment=augmentation,
                                     example_count=train_count, epochs=total, first_epoch=first_epoch,
                                     exclude=excluded, shard=shard.as_tuple() if shard else None,
                                     alternate_flips=augment.alternates_flips(params.augment))
    recipe.compile_model(model, config, steps_per_epoch=steps, jit_compile=params.training.jit_compile,
                        epochs=config.finetune_epochs, learning_rate=config.finetune_learning_rate)
    history = head_rows + [row for row in resume.history(FINETUNE_PHASE) if row["epoch"] > start]
    logger = fitting.EpochLogger([*history_paths, resume.history_path(FINETUNE_PHASE)],
                                 examples_per_epoch=train_count, rows=history, phase=FINETUNE_PHASE)
    callbacks = recipe.training_callbacks(params, config, resume=resume, phase=FINETUNE_PHASE, logger=logger,
                                          history=history[start:], model_name="transfer", run_id=run_id,
                                          project_root=project_root)
    # shuffle=False: the dataset shuffles each epoch itself (tfdata); Keras would warn that it ignores True.
    model.fit(train_data, validation_data=val_data, epochs=total, initial_epoch=start, steps_per_epoch=steps,
              callbacks=callbacks, shuffle=False, verbose=progress.keras_verbose())
    fitting.restore_best(model, config, resume.phase_dir(FINETUNE_PHASE))
    return logger.rows
