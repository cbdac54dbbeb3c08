"""BatchNorm's inference statistics: re-estimated with dropout off, so a model trained for a few dozen steps does
not collapse to one class at inference (issue 9)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from imgclf import artifacts, model_io
from imgclf.config import params_from_dict
from imgclf.data import preprocess, sources, tfdata
from imgclf.smoke_copy import merge
from imgclf.training import fitting, scratch, transfer_model


def _nested_model(dropout: float) -> tuple[keras.Model, keras.Model]:
    """Functional model holding a sequential block: Dense -> Dropout -> BatchNorm, then a frozen BatchNorm."""
    block = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="dense"),
                              keras.layers.Dropout(dropout, name="dropout"),
                              keras.layers.BatchNormalization(name="bn")], name="block")
    inputs = keras.Input((6,))
    frozen = keras.layers.BatchNormalization(name="frozen_bn")
    frozen.trainable = False
    outputs = keras.layers.Dense(2, activation="softmax")(frozen(block(inputs)))
    return keras.Model(inputs, outputs), block


def _batches(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(3.0, 2.0, size=(size, 6)).astype("float32") for _ in range(count)]


def test_population_statistics_are_the_average_of_batch_statistics_with_dropout_off():
    model, block = _nested_model(dropout=0.9)
    batches = [*_batches(4, 16), _batches(1, 5, seed=1)[0]]  # a smaller last batch weighs less
    frozen = model.get_layer("frozen_bn")
    frozen_before = [np.array(weight) for weight in frozen.get_weights()]
    batch_norm = block.get_layer("bn")

    assert fitting.reestimate_batch_norm(model, batches) == 69

    dense = block.get_layer("dense")
    inputs = [np.asarray(dense(batch)) for batch in batches]  # what BatchNorm sees without dropout
    weights = np.array([len(batch) for batch in batches], dtype=np.float64)
    expected_mean = np.average([x.mean(axis=0) for x in inputs], axis=0, weights=weights)
    expected_variance = np.average([x.var(axis=0) for x in inputs], axis=0, weights=weights)
    np.testing.assert_allclose(np.asarray(batch_norm.moving_mean), expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(batch_norm.moving_variance), expected_variance, rtol=1e-4, atol=1e-5)
    # A frozen BatchNorm uses its moving statistics in training too: nothing to re-estimate.
    for before, after in zip(frozen_before, frozen.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    # The layer is itself again: inference uses the new statistics, training its usual momentum.
    assert "call" not in vars(batch_norm) and batch_norm.momentum == 0.99
    probe = batches[0]
    np.testing.assert_allclose(np.asarray(block(probe, training=False)),
                               (inputs[0] - expected_mean) / np.sqrt(expected_variance + batch_norm.epsilon)
                               * np.asarray(batch_norm.gamma) + np.asarray(batch_norm.beta), rtol=1e-3, atol=1e-4)


def test_reestimation_under_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model, block = _nested_model(dropout=0.5)
        batches = _batches(3, 32)
        fitting.reestimate_batch_norm(model, batches)
        batch_norm = block.get_layer("bn")
        assert batch_norm.moving_mean.dtype == "float32"
        inputs = [np.asarray(block.get_layer("dense")(batch), dtype=np.float32) for batch in batches]
        np.testing.assert_allclose(np.asarray(batch_norm.moving_mean), np.mean([x.mean(0) for x in inputs], 0),
                                   rtol=0.05, atol=0.05)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_a_model_without_trainable_batch_norm_is_left_alone():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    before = [np.array(weight) for weight in model.get_weights()]
    assert fitting.reestimate_batch_norm(model, _batches(2, 8)) == 0
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_fine_tuning_keeps_every_backbone_batch_norm_frozen(params_dict):
    """Transfer is not affected: its head has no BatchNorm and fine-tuning freezes the backbone's (whose
    ImageNet statistics are then used in training and inference alike)."""
    from imgclf.training import transfer

    pixels = keras.Input((16, 16, 3))
    hidden = keras.layers.Conv2D(4, 3)(pixels)
    hidden = keras.layers.BatchNormalization()(hidden)
    backbone = keras.Model(pixels, keras.layers.Conv2D(4, 3)(hidden), name="backbone")
    extractor = transfer_model.build_feature_extractor(backbone, "none", input_shape=(16, 16, 3), input_size=16)
    config = params_from_dict(params_dict).transfer
    head = transfer_model.build_head(config, train_features=np.random.default_rng(0).normal(size=(8, 4)), num_classes=2)
    model = transfer_model.assemble_transfer_model(extractor, head)
    assert transfer.unfreeze(extractor, 0) == 2
    assert fitting.trainable_batch_norm_layers(model) == []


def write_object_photos(root, per_class: int, *, size: int = 32, seed: int = 0):
    """Two classes of photo-like images: a warm or a cool object (disc or box, random place, size and shade)
    on a random smooth two-colour background with sensor noise, saved as JPEG. No class has its own
    background, so the model must find the object."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size, 0:size]
    for name, hue in (("cool", (40, 110, 200)), ("warm", (210, 90, 40))):
        folder = root / name
        folder.mkdir(parents=True)
        for number in range(per_class):
            top, bottom = rng.integers(40, 220, size=(2, 3))
            mix = (rows / size)[..., None] if rng.random() < 0.5 else (columns / size)[..., None]
            image = top * (1 - mix) + bottom * mix
            radius = rng.uniform(size * 0.15, size * 0.3)
            centre = rng.uniform(radius, size - radius, size=2)
            if rng.random() < 0.5:
                inside = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < radius**2
            else:
                inside = (np.abs(rows - centre[0]) < radius) & (np.abs(columns - centre[1]) < radius * 0.7)
            image[inside] = np.clip(np.array(hue) + rng.normal(0, 25, size=3), 0, 255)
            image += rng.normal(0, 12, size=image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{number:04d}.jpg", quality=90)
    return root


@pytest.mark.slow(seconds=40)
def test_seed_cnn_trained_for_under_50_steps_does_not_collapse(tmp_path, params_dict, monkeypatch, new_mlflow_store):
    """The seed architecture, unchanged, through the real stages on a small two-class photo folder: before the
    re-estimation every test image got one class (validation and test at chance) while training accuracy
    climbed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_mlflow_store(tmp_path))
    folder = write_object_photos(tmp_path / "photos", per_class=150)
    params = params_from_dict(merge(params_dict, {
        "data": {"source": "image_folder", "path": str(folder)},
        "scratch": {"epochs": 6, "batch_size": 32}, "mlflow": {"experiment": "collapse-test"}}))
    sources.fetch_source(source="image_folder", path=str(folder), sha256=None, raw_dir=tmp_path / "raw",
                         download_dir=tmp_path / "downloads", seed=params.seed)
    meta = preprocess.run(params, raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared", workers=1)
    steps = params.scratch.epochs * -(-meta["counts"]["train"] // params.scratch.batch_size)
    assert steps < 50

    summary = scratch.train_scratch(params, prepared_dir=tmp_path / "prepared", out_dir=tmp_path / "scratch",
                                  project_root=tmp_path)

    model = model_io.load_model(tmp_path / "scratch" / artifacts.MODEL_FILE)
    shape = artifacts.PreparedMeta.from_dict(meta).image_shape
    test = tfdata.make_dataset(tmp_path / "prepared", "test", image_shape=shape, num_classes=2,
                               batch_size=64)
    predicted, labels = [], []
    for images, targets in tfdata.iterate_numpy(test):
        predicted.append(np.argmax(model.predict_on_batch(images), axis=1))
        labels.append(np.argmax(targets, axis=1))
    predicted, labels = np.concatenate(predicted), np.concatenate(labels)
    test_accuracy = float(np.mean(predicted == labels))
    validation_accuracy = summary["final"]["val_accuracy"]
    assert min(np.bincount(predicted, minlength=2)) > 0.2 * len(predicted), "one class for (almost) every image"
    assert test_accuracy >= 0.8, f"test accuracy {test_accuracy:.3f}"
    assert abs(test_accuracy - validation_accuracy) <= 0.1, (test_accuracy, validation_accuracy)
    assert summary["final"]["batchnorm_seconds"] > 0
