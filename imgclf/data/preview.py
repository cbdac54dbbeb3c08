"""The preview stage: the prepared data's class distribution and a grid of augmented training images.

Drawn beside the prepared data (`results/preview`), not inside it: the prepared data is what every training
stage depends on, so a figure of the `augment.*` policy written there made `augment.*` a dependency of the
preprocess stage, and turning augmentation on decoded every image again and reran both trainings' inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgclf import artifacts, figures, fileio
from imgclf.config import Params
from imgclf.data import augment, records


def sample_training_images(prepared_dir: Path, *, image_shape: tuple[int, int, int], train_count: int, count: int,
                           seed: int) -> tuple[np.ndarray, list[int]]:
    """A seeded sample of `count` training images (pixels, labels) in shard order, drawn by position from the
    whole split: the shards hold it sorted by class, so the first images would show the first classes only."""
    chosen = set(np.random.default_rng(seed).choice(train_count, size=min(count, train_count),
                                                    replace=False).tolist())
    pixels, labels = [], []
    for position, record in enumerate(records.read_records(records.split_files(prepared_dir, "train"))):
        if position in chosen:
            example = record.example()
            pixels.append(record.image(image_shape, example))
            labels.append(example.label)
    if len(pixels) != len(chosen):
        raise records.CorruptShardError(
            f"the train shards in {prepared_dir} hold fewer images than meta.json counts ({train_count}); rerun the "
            "preprocess stage (`dvc repro --force preprocess`)")
    return np.stack(pixels), labels


def run(params: Params, *, prepared_dir: Path, out_dir: Path) -> None:
    """The preview stage: write `class_distribution.png` and `augmentation_preview.png` to `out_dir`."""
    meta = artifacts.read_prepared_meta(prepared_dir)
    originals, labels = sample_training_images(prepared_dir, image_shape=meta.image_shape,
                                               train_count=meta.counts["train"], count=params.augment.preview_images,
                                               seed=params.seed)
    layers = augment.build_augmentation(params.augment, seed=params.seed)
    pixels = np.asarray(originals, dtype=np.float32)
    augmented = np.asarray(layers(pixels, training=True)) if layers is not None else pixels
    shown = list(np.clip(augmented, 0, 255).astype(np.uint8))
    captions = [meta.class_names[label] for label in labels]
    state = "on" if params.augment.enabled else "off (preview of the policy only)"
    with fileio.staged_directory(out_dir) as staging:
        figures.class_distribution(meta.counts_per_class, meta.class_names, staging / artifacts.CLASS_DISTRIBUTION_PLOT)
        figures.image_grid(shown, captions, staging / artifacts.AUGMENTATION_PREVIEW_PLOT,
                         title=f"Augmented training samples: augment {state}")
