"""The features stage: every prepared image through the frozen backbone exactly once, pooled features cached.

Kept apart from the head training code (imgclf/training/transfer.py) so that editing the head never invalidates
the cached features in DVC's eyes.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import keras
import numpy as np

from imgclf import artifacts, fileio, model_io, progress
from imgclf.artifacts import PreparedMeta
from imgclf.config import Params, TransferConfig
from imgclf.data import augment, tfdata
from imgclf.errors import ModelConfigError
from imgclf.training import transfer_model

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def load_backbone(resolved: dict, config: TransferConfig) -> tuple[keras.Model, str]:
    """The backbone (headless, feature map out) and its preprocessing mode.

    `resolved` is `backbones.resolve(config)`: a `keras.applications` constructor and its preprocessing mode, or
    the path of a `.keras` file that takes raw [0, 255] RGB and returns a feature map. `config.weights` is
    `imagenet`, null/`none` (random init) or a path to a weights file for the named architecture.
    """
    if "file" in resolved:
        path = Path(resolved["file"])
        if not path.is_file():
            raise ModelConfigError(f"transfer.backbone: backbone file {path} not found; give an existing "
                                   ".keras file or one of the backbones in imgclf/training/backbones.py")
        return model_io.load_model(path, remedy="give a .keras backbone that takes raw [0, 255] RGB and returns a "
                                      "feature map, or a keras.applications backbone's name"), "none"
    weights = None if config.weights in (None, "none") else config.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ModelConfigError(f"transfer.weights: weights file {weights} not found; use imagenet, none, "
                               "or the path of a weights file for this architecture")
    constructor = getattr(keras.applications, resolved["constructor"])
    try:
        backbone = constructor(include_top=False, weights=weights,
                               input_shape=(config.input_size, config.input_size, 3))
    except Exception as error:  # network failures surface as many exception types
        if weights == "imagenet":
            raise ModelConfigError(
                f"could not load ImageNet weights for {config.backbone} ({error}). Offline? Set "
                "transfer.backbone to a local .keras backbone file (see README: working offline)") from error
        raise
    return backbone, resolved["preprocessing"]


def extract_features(params: Params, *, prepared_dir: Path, backbone_file: Path, out_dir: Path) -> dict:
    """The features stage: run the frozen backbone once over every split; write `<split>.npz` and the extractor.

    `backbone_file` is check_params' resolution of `transfer.backbone` (`imgclf.training.backbones.resolve`)."""
    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    meta = artifacts.read_prepared_meta(prepared_dir)
    shape, config = meta.image_shape, params.transfer
    backbone, preprocessing = load_backbone(fileio.read_json(backbone_file), config)
    backbone.trainable = False
    extractor = transfer_model.build_feature_extractor(backbone, preprocessing, input_shape=shape,
                                               input_size=config.input_size)
    # Every file goes to a staging directory that replaces out_dir at the end: never a mix of two runs.
    with fileio.staged_directory(out_dir) as staging:
        return _extract_views(extractor, backbone, preprocessing, params, prepared_dir=prepared_dir, meta=meta,
                              out_dir=staging)


def _extract_views(extractor: keras.Model, backbone: keras.Model, preprocessing: str, params: Params, *,
                   prepared_dir: Path, meta: PreparedMeta, out_dir: Path) -> dict:
    config, shape = params.transfer, meta.image_shape
    # (output name, augmentation or None, view number): the plain splits, then augmented training views.
    views = [(split, None, 0) for split in SPLITS]
    if params.augment.enabled and config.augment_copies:
        augmentation = augment.build_augmentation(params.augment, seed=params.seed)
        views += [(f"{artifacts.AUGMENTED_VIEW_PREFIX}{copy}", augmentation, copy)
                  for copy in range(1, config.augment_copies + 1)]
    timings = {}
    for name, augmentation, copy in views:
        split = "train" if name.startswith(artifacts.AUGMENTED_VIEW_PREFIX) else name
        dataset = tfdata.make_dataset(prepared_dir, split, image_shape=shape, num_classes=meta.num_classes,
                                      batch_size=config.feature_batch_size, with_index=True,
                                      training=augmentation is not None, augment=augmentation,
                                      seed=params.seed + copy, epochs=1,
                                      alternate_flips=(augmentation is not None
                                                       and augment.alternates_flips(params.augment)))
        started = time.perf_counter()
        features, labels = run_extractor(extractor, dataset, description=f"features {name}",
                                         total=meta.counts.get(split))
        seconds = time.perf_counter() - started
        timings[name] = {"images": len(labels), "seconds": round(seconds, 3),
                         "images_per_second": round(len(labels) / seconds, 1) if seconds > 0 else 0.0}
        log.info("%s: %d images through the backbone at %.1f images/s", name, len(labels),
                 timings[name]["images_per_second"])
        _save_npz(out_dir / artifacts.features_file(name), features=features, labels=labels)
    model_io.save_model(extractor, out_dir / artifacts.EXTRACTOR_FILE)
    summary = {"backbone": config.backbone, "weights": config.weights, "input_size": config.input_size,
               "preprocessing": preprocessing, "feature_dim": int(extractor.output_shape[-1]),
               "backbone_parameters": int(backbone.count_params()),
               "augmented_views": [name for name, _, copy in views if copy], "timings": timings}
    fileio.atomic_write_json(out_dir / artifacts.FEATURES_META, summary)
    return summary


def run_extractor(extractor: keras.Model, dataset, *, description: str = "features",
                  total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of every image of `dataset`, one backbone pass per batch (with a progress bar
    in a terminal: 60,000 CIFAR images take minutes on a CPU).

    Through `predict_on_batch`, one traced inference function, not an eager call per batch: on the 2-core CPU
    EfficientNet-Lite0 at 128 px extracts 142.8 images/s that way against 90.5 eager (XLA: 16.0;
    `bench/training.py extraction-throughput`)."""
    feature_batches, label_batches = [], []
    with progress.step(description, total=total, summary=False) as counter:
        for images, targets, _ in dataset:
            feature_batches.append(np.asarray(extractor.predict_on_batch(images), dtype=np.float32))
            label_batches.append(np.argmax(np.asarray(targets), axis=-1))
            counter.update(len(label_batches[-1]))
    return np.concatenate(feature_batches), np.concatenate(label_batches).astype(np.int64)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    fileio.atomic_write_bytes(path, buffer.getvalue())
