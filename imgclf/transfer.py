"""Transfer learning with a frozen ImageNet backbone that runs once per image.

The features stage pushes every prepared image through the backbone a single time and caches the pooled
features (a DVC output); the transfer stage trains the new head on those cached features, so no head
epoch, and no change to head params, ever runs the backbone again. The head is then joined to the saved
feature extractor into one raw-pixels-to-probabilities model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import keras
import mlflow
import numpy as np

from imgclf import fileio, models, tracking, train
from imgclf.config import Params

log = logging.getLogger(__name__)

EXTRACTOR_FILE = "extractor.keras"
FEATURES_META = "features.json"
SPLITS = ("train", "val", "test")


def extract_features(params: Params, *, prepared_dir: Path, out_dir: Path) -> dict:
    """The features stage: run the frozen backbone once over every split; write `<split>.npz` and the extractor."""
    from imgclf import tfdata

    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    meta = train.read_meta(prepared_dir)
    shape, config = train.image_shape(meta), params.transfer
    backbone, preprocessing = models.load_backbone(config)
    backbone.trainable = False
    extractor = models.build_feature_extractor(backbone, preprocessing, input_shape=shape,
                                               input_size=config.input_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    for split in SPLITS:
        dataset = tfdata.make_dataset(prepared_dir, split, image_shape=shape, num_classes=meta["num_classes"],
                                      batch_size=config.feature_batch_size, with_index=True)
        started = time.perf_counter()
        features, labels = _run_extractor(extractor, dataset)
        seconds = time.perf_counter() - started
        timings[split] = {"images": len(labels), "seconds": seconds,
                          "images_per_second": len(labels) / seconds if seconds > 0 else 0.0}
        log.info("%s: %d images through the backbone at %.1f images/s", split, len(labels),
                 timings[split]["images_per_second"])
        _save_npz(out_dir / f"{split}.npz", features=features, labels=labels)
    train.save_model(extractor, out_dir / EXTRACTOR_FILE)
    summary = {"backbone": config.backbone, "weights": config.weights, "input_size": config.input_size,
               "preprocessing": preprocessing, "feature_dim": int(extractor.output_shape[-1]),
               "backbone_parameters": int(backbone.count_params()), "timings": timings}
    fileio.atomic_write_json(out_dir / FEATURES_META, summary)
    return summary


def _run_extractor(extractor: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
    feature_batches, label_batches = [], []
    for images, targets, _ in dataset:
        feature_batches.append(np.asarray(extractor(images, training=False)))
        label_batches.append(np.argmax(np.asarray(targets), axis=-1))
    return np.concatenate(feature_batches).astype(np.float32), np.concatenate(label_batches).astype(np.int64)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    fileio.atomic_write_bytes(path, buffer.getvalue())


def load_features(features_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(features_dir) / f"{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the features stage first (dvc repro)")
    with np.load(path) as data:
        return data["features"], data["labels"]


def train_transfer(params: Params, *, prepared_dir: Path, features_dir: Path, out_dir: Path,
                   project_root: Path) -> dict:
    """The transfer stage: fit the head on cached features, then save the end-to-end `model.keras`."""
    from imgclf import tfdata

    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    meta = train.read_meta(prepared_dir)
    features_meta = fileio.read_json(Path(features_dir) / FEATURES_META)
    num_classes, config = meta["num_classes"], params.transfer
    train_x, train_y = load_features(features_dir, "train")
    val_x, val_y = load_features(features_dir, "val")
    head = models.build_head(config, train_features=train_x, num_classes=num_classes)
    head.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                 loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logged = tracking.stage_params(params, "data", "preprocess", "transfer")
    with tracking.training_run(params, model="transfer", project_root=project_root, out_dir=out_dir,
                               data_sha256=meta.get("source_sha256"), logged_params=logged):
        mlflow.log_params({"feature_dim": int(train_x.shape[1]), "train_images": len(train_y),
                           "backbone_parameters": features_meta["backbone_parameters"]})
        logger = train.EpochLogger(out_dir / train.HISTORY_FILE, examples_per_epoch=len(train_y))
        head.fit(train_x, keras.utils.to_categorical(train_y, num_classes), batch_size=config.batch_size,
                 validation_data=(val_x, keras.utils.to_categorical(val_y, num_classes)),
                 epochs=config.epochs, shuffle=True, callbacks=[logger], verbose=2)
        extractor = models.load_model(Path(features_dir) / EXTRACTOR_FILE)
        model = models.assemble_transfer_model(extractor, head)
        train.save_model(model, out_dir / train.MODEL_FILE)
        val_data = tfdata.make_dataset(prepared_dir, "val", image_shape=train.image_shape(meta),
                                       num_classes=num_classes, batch_size=2)
        train.log_model(model, train.first_images(val_data))
        summary = train.summarize(logger.rows, model)
        mlflow.log_dict(summary, "train_summary.json")
    fileio.atomic_write_json(out_dir / train.SUMMARY_FILE, summary)
    return summary
