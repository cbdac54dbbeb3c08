"""The train-from-scratch stage: fit the seed CNN on the prepared data and save it as `model.keras`."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np

from imgclf import artifacts, fileio, model_io, progress
from imgclf.config import Params
from imgclf.data import augment, exclusions, records, tfdata
from imgclf.tracking import runs
from imgclf.training import distributed, fitting, recipe, scratch_model

log = logging.getLogger(__name__)


def train_scratch(params: Params, *, prepared_dir: Path, out_dir: Path, project_root: Path,
                  exclude_path: Path | None = None) -> dict:
    """The train-from-scratch stage: fit the seed CNN on the prepared data (less the training ids in
    `exclude_path`) and save `model.keras`."""
    if distributed.launched(params.training, out_dir):  # multi_worker: the workers trained (training/distributed.py)
        return fileio.read_json(Path(out_dir) / artifacts.SUMMARY_FILE)
    shard = distributed.join(params.training)  # None unless this is a multi_worker worker
    # First: a multi-worker strategy must configure collective ops before any TensorFlow op (and a refused one
    # stops the stage before any work).
    strategy = tfdata.distribution_strategy(params.training.distribute)
    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    recipe.set_precision(params.training.precision)
    meta = artifacts.read_prepared_meta(prepared_dir)
    excluded = exclusions.read(exclude_path)
    shape, num_classes, train_count = meta.image_shape, meta.num_classes, meta.counts["train"] - len(excluded)
    config = params.scratch
    out_dir = distributed.outputs(shard, out_dir)  # the chief's is the stage's
    resume = fitting.ResumeState(out_dir / artifacts.RESUME_DIR, enabled=params.training.resume,
                                 fingerprint={**recipe.fingerprint(params, meta, "augment", "scratch", "training"),
                                              **({"excluded": sorted(excluded)} if excluded else {})})
    first_epoch = distributed.agreed_start(shard, resume, "fit")
    if first_epoch:
        log.info("resuming from the end of epoch %d of %d", first_epoch, config.epochs)
    steps = (shard.steps_per_epoch(train_count, config.batch_size) if shard
             else tfdata.steps_per_epoch(train_count, config.batch_size))
    batch_size = shard.batch_size(config.batch_size) if shard else config.batch_size  # per process
    sharding = shard.as_tuple() if shard else None
    augmentation = augment.build_augmentation(params.augment, seed=params.seed) if params.augment.enabled else None
    train_data = tfdata.make_dataset(prepared_dir, "train", image_shape=shape, num_classes=num_classes,
                                     batch_size=batch_size, training=True, seed=params.seed,
                                     augment=augmentation, example_count=train_count, epochs=config.epochs,
                                     first_epoch=first_epoch, exclude=excluded, shard=sharding,
                                     alternate_flips=augment.alternates_flips(params.augment))
    val_data = tfdata.make_dataset(prepared_dir, "val", image_shape=shape, num_classes=num_classes,
                                   batch_size=batch_size, example_count=meta.counts["val"])
    # BatchNorm's inference statistics are re-estimated on shuffled, unaugmented training batches of the
    # training batch size (batch statistics depend on it) before each validation (fitting.reestimate_batch_norm).
    statistics_batches = -(-(config.batch_norm_images or train_count) // config.batch_size)
    if shard:
        statistics_batches = min(statistics_batches, steps)  # whole global batches, the same count everywhere
    statistics_data = tfdata.make_dataset(prepared_dir, "train", image_shape=shape, num_classes=num_classes,
                                          batch_size=batch_size, training=True, seed=params.seed,
                                          example_count=train_count, exclude=excluded,
                                          shard=sharding).take(statistics_batches)

    with strategy.scope():
        model = scratch_model.build_scratch_model(config, input_shape=shape, num_classes=num_classes)
        if config.architecture == "residual":
            pixels = training_pixels(prepared_dir, image_shape=shape, train_count=train_count, seed=params.seed)
            scratch_model.set_patch_whitening(model, pixels)
        recipe.compile_model(model, config, steps_per_epoch=steps, jit_compile=params.training.jit_compile)
    logged = runs.stage_params(params, "data", "preprocess", "augment", "scratch", "training")
    with runs.training_run(params, model="scratch", project_root=project_root, out_dir=out_dir,
                               data_sha256=meta.source_sha256, logged_params=logged,
                               run_id=resume.run_id()) as run:
        resume.remember_run(run.info.run_id)
        mlflow.log_params({"parameter_count": model.count_params(), "train_images": train_count})
        history = resume.history("fit")
        logger = fitting.EpochLogger([out_dir / artifacts.HISTORY_FILE, resume.history_path("fit")],
                                     examples_per_epoch=train_count, rows=history)
        lookahead = [fitting.Lookahead(total_steps=steps * config.epochs)] if config.lookahead else []
        callbacks = lookahead + recipe.training_callbacks(params, config, resume=resume, phase="fit", logger=logger,
                                              history=history, model_name="scratch", run_id=run.info.run_id,
                                              project_root=project_root,
                                              validation=fitting.ValidateWithPopulationStatistics(
                                                  val_data, statistics_batches=lambda: distributed.global_batches(
                                                      statistics_data, shard)))
        # shuffle=False: the dataset shuffles each epoch itself (tfdata); Keras would warn that it ignores True.
        model.fit(train_data, epochs=config.epochs, steps_per_epoch=steps, callbacks=callbacks, shuffle=False,
                  verbose=progress.keras_verbose())
        fitting.restore_best(model, config, resume.phase_dir("fit"))
        model_io.save_model(model, out_dir / artifacts.MODEL_FILE)  # every worker: saving is a collective
        distributed.leave(shard)
        summary = recipe.summarize(logger.rows, model)
        mlflow.log_dict(summary, artifacts.SUMMARY_FILE)
    fileio.atomic_write_json(out_dir / artifacts.SUMMARY_FILE, summary)
    resume.clear()
    distributed.finish(shard)  # a worker ends here
    return summary


WHITENING_IMAGES = 5000  # airbench's sample: the 2x2 patch covariance is settled long before this


def training_pixels(prepared_dir: Path, *, image_shape: tuple[int, int, int], train_count: int, seed: int,
                    count: int = WHITENING_IMAGES) -> np.ndarray:
    """A seeded uniform sample of `count` raw training images, unaugmented (for data-dependent initialisation).

    Drawn by position from the whole split: the shards hold it sorted by class, and the head of a shuffle buffer
    smaller than the split holds only the first classes. (Taken from tf.data's 20,000-image buffer, the CIFAR-10
    whitening sample held classes 0-5 only: no frog, horse, ship or truck.)
    """
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(train_count, size=min(count, train_count), replace=False).tolist())
    images = [record.image(image_shape)
              for position, record in enumerate(records.read_records(records.split_files(prepared_dir, "train")))
              if position in chosen]
    if len(images) != len(chosen):
        raise records.CorruptShardError(
            f"the train shards in {prepared_dir} hold fewer images than meta.json counts ({train_count}); rerun the "
            "preprocess stage (`dvc repro --force preprocess`)")
    return np.stack(images)
