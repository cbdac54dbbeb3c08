"""The residual from-scratch net, its training recipe's pieces, the profiles and flip test-time augmentation."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from imgclf import artifacts, errors, model_io, smoke_copy
from imgclf.config import ConfigError, params_from_dict
from imgclf.entry_points import PROJECT_ROOT
from imgclf.evaluation import evaluate
from imgclf.training import backbones, features, fitting, scratch_model, transfer_model

PROFILES = PROJECT_ROOT / "profiles"
SEED_CNN_PARAMETERS = 2_264_458
RESIDUAL_PARAMETERS = 1_973_944  # widths 64/256/256 on 32x32x3, 10 classes (airbench94's net has the same)
RESIDUAL_PROFILE_PARAMETERS = 4_608_312  # the profile's widths 128/384/384 (airbench95's)


def profile_params(params_dict: dict, name: str):
    overrides = yaml.safe_load((PROFILES / name).read_text())
    return params_from_dict(smoke_copy.merge(params_dict, overrides), source=name)


def test_seed_cnn_stays_the_default(params_dict):
    params = params_from_dict(params_dict)
    assert params.scratch.architecture == "seed_cnn"
    model = scratch_model.build_scratch_model(params.scratch, input_shape=(32, 32, 3), num_classes=10)
    assert model.count_params() == SEED_CNN_PARAMETERS


def test_residual_net_parameter_count_and_shapes(params_dict):
    params_dict["scratch"]["architecture"] = "residual"
    model = scratch_model.build_scratch_model(params_from_dict(params_dict).scratch, input_shape=(32, 32, 3),
                                       num_classes=10)
    assert model.count_params() == RESIDUAL_PARAMETERS
    assert model.get_layer(scratch_model.WHITEN_LAYER).output.shape[1:] == (31, 31, 24)
    assert not model.get_layer(scratch_model.WHITEN_LAYER).trainable
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize(("profile", "parameters"), [("scratch_best.yaml", SEED_CNN_PARAMETERS),
                                                     ("scratch_residual.yaml", RESIDUAL_PROFILE_PARAMETERS)])
def test_scratch_profiles_build(params_dict, profile, parameters):
    params = profile_params(params_dict, profile)
    model = scratch_model.build_scratch_model(params.scratch, input_shape=(32, 32, 3), num_classes=10)
    assert model.count_params() == parameters
    fitting.make_optimizer(params.scratch, steps_per_epoch=88)  # the recipe's optimizer builds too


@pytest.mark.shared
def test_transfer_finetune_profile_builds(params_dict, monkeypatch, shared_backbone):
    monkeypatch.chdir(PROJECT_ROOT)  # the profile names the backbone relative to the project root
    params = profile_params(params_dict, "transfer_finetune.yaml")
    backbone, mode = features.load_backbone(backbones.resolve(params.transfer), params.transfer)
    extractor = transfer_model.build_feature_extractor(backbone, mode, input_shape=(32, 32, 3),
                                               input_size=params.transfer.input_size)
    zeros = np.zeros((2, extractor.output_shape[-1]), "float32")
    head = transfer_model.build_head(params.transfer, train_features=zeros, num_classes=10)
    model = transfer_model.assemble_transfer_model(extractor, head)
    assert extractor.output_shape == (None, 1280)
    assert model.count_params() == 3_428_395  # Lite0 without its top, and a linear head


def test_patch_whitening_decorrelates_patches():
    rng = np.random.default_rng(0)
    # Strongly correlated pixels: smooth images with a colour cast, like photos.
    base = rng.normal(size=(64, 8, 8, 1)).repeat(4, axis=1).repeat(4, axis=2)
    images = np.clip(128 + 40 * base * np.array([1.0, 0.8, 0.5]) + rng.normal(0, 5, (64, 32, 32, 3)), 0, 255)
    kernel, bias = scratch_model.patch_whitening_weights(images, epsilon=0.0)
    assert kernel.shape == (2, 2, 3, 24) and bias.shape == (24,)
    windows = np.lib.stride_tricks.sliding_window_view(images / 255.0, (2, 2), axis=(1, 2))
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)
    whitened = patches @ kernel.reshape(12, 24)[:, :12] + bias[:12]
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(whitened.T), np.eye(12), atol=2e-3)


def test_set_patch_whitening_goes_into_the_model(params_dict):
    params_dict["scratch"].update(architecture="residual", residual_widths=[8])
    model = scratch_model.build_scratch_model(params_from_dict(params_dict).scratch, input_shape=(16, 16, 3),
                                       num_classes=2)
    images = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3))
    scratch_model.set_patch_whitening(model, images)
    kernel, bias = scratch_model.patch_whitening_weights(images)
    np.testing.assert_allclose(model.get_layer(scratch_model.WHITEN_LAYER).get_weights()[0], kernel)
    np.testing.assert_allclose(model.get_layer(scratch_model.WHITEN_LAYER).get_weights()[1], bias)


def test_identity_initialised_conv_passes_its_input_through():
    inputs = np.random.default_rng(2).normal(size=(2, 6, 6, 4)).astype("float32")
    conv = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, kernel_initializer=model_io.PartialIdentity())
    outputs = np.asarray(conv(inputs))
    np.testing.assert_allclose(outputs[..., :4], inputs, atol=1e-6)
    assert np.abs(outputs[..., 4:]).max() > 0  # the extra filters are random, not zero


def test_too_many_blocks_for_the_image_size_is_refused(params_dict):
    params_dict["scratch"].update(architecture="residual", residual_widths=[8, 8, 8, 8, 8, 8])
    with pytest.raises(errors.ModelConfigError, match="residual_widths"):
        scratch_model.build_scratch_model(params_from_dict(params_dict).scratch, input_shape=(32, 32, 3), num_classes=2)


def test_residual_net_loss_falls_and_round_trips(params_dict, tmp_path):
    """A few SGD steps of the real recipe (profile optimizer, warm-up, label smoothing) on two learnable classes."""
    keras.utils.set_random_seed(1)
    params_dict = smoke_copy.merge(params_dict, yaml.safe_load((PROFILES / "scratch_residual.yaml").read_text()))
    params_dict["scratch"].update(residual_widths=[16, 32], batch_size=32, epochs=6, warmup_epochs=1.0,
                                  learning_rate=0.1)
    config = params_from_dict(params_dict).scratch
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=64)
    # class 1 is brighter on the left half: learnable only through spatial structure, not the mean colour alone
    images = rng.uniform(0, 200, size=(64, 16, 16, 3))
    images[labels == 1, :, :8] += 55
    model = scratch_model.build_scratch_model(config, input_shape=(16, 16, 3), num_classes=2)
    scratch_model.set_patch_whitening(model, images)
    model.compile(optimizer=fitting.make_optimizer(config, steps_per_epoch=2), loss=fitting.make_loss(config))
    history = model.fit(images, keras.utils.to_categorical(labels, 2), batch_size=32, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    model.save(tmp_path / "model.keras")
    restored = model_io.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(np.asarray(restored(images[:4])), np.asarray(model(images[:4])), atol=1e-5)


def test_warmup_then_linear_decay_peaks_at_the_learning_rate(params_dict):
    """airbench's triangle: up to the full rate over the warm-up, then down to 0 at the last step."""
    params_dict["scratch"].update(optimizer="sgd", learning_rate=1.0, lr_schedule="linear", warmup_epochs=1.0,
                                  epochs=10)
    schedule = fitting.learning_rate(params_from_dict(params_dict).scratch, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 4, 9, 10, 55, 100)]
    assert rates == pytest.approx([0.1, 0.5, 1.0, 1.0, 0.5, 0.0])
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(restored(30)) == pytest.approx(float(schedule(30)))


def test_scaled_bias_learns_multiplier_squared_times_faster():
    """One SGD step moves a ScaledBias(8) output by 64 times the rate: airbench's BatchNorm-bias rate."""
    model = keras.Sequential([keras.Input(shape=(3,)), model_io.ScaledBias(8.0, name="shift")])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=lambda _, outputs: keras.ops.sum(outputs, axis=-1))
    model.train_on_batch(np.zeros((4, 3), "float32"), np.zeros((4, 3), "float32"))
    np.testing.assert_allclose(np.asarray(model(np.zeros((1, 3), "float32"))), -64 * 0.01, rtol=1e-5)


def test_lookahead_averages_every_interval_and_ends_on_the_average():
    """Constant gradient 1 at rate 1: the weight falls by one per step; the slow copy pulls it back every 5."""
    weight = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")
    model = keras.Sequential([keras.Input(shape=(1,)), weight])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=lambda _, outputs: keras.ops.sum(outputs, axis=-1))
    lookahead = fitting.Lookahead(total_steps=10, interval=5, base_decay=0.5)
    model.fit(np.ones((10, 1), "float32"), np.zeros((10, 1), "float32"), batch_size=1, epochs=1, shuffle=False,
              callbacks=[lookahead], verbose=0)
    at_step_5 = (1 - 0.5 * 0.5 ** 3) * -5.0  # decay 0.5 * (5 / 10) ** 3 on a slow copy still at 0
    at_step_10 = 0.5 * at_step_5 + 0.5 * (at_step_5 - 5.0)
    assert float(keras.ops.convert_to_numpy(weight.kernel)[0, 0]) == pytest.approx(at_step_10)


def test_lookahead_starts_from_weights_restored_after_it_in_train_begin():
    """BackupAndRestore sets the weights in its on_train_begin, listed after Lookahead: the slow copy must start
    from the restored weights, or a resumed run would pull its weights back towards their random init."""
    weight = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")
    model = keras.Sequential([keras.Input(shape=(1,)), weight])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=lambda _, outputs: keras.ops.sum(outputs, axis=-1))

    class Restore(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            weight.kernel.assign(np.full((1, 1), 10.0, "float32"))

    lookahead = fitting.Lookahead(total_steps=10, interval=5, base_decay=0.5)
    model.fit(np.ones((10, 1), "float32"), np.zeros((10, 1), "float32"), batch_size=1, epochs=1, shuffle=False,
              callbacks=[lookahead, Restore()], verbose=0)
    at_step_5 = 10.0 + (1 - 0.5 * 0.5 ** 3) * -5.0
    at_step_10 = 0.5 * at_step_5 + 0.5 * (at_step_5 - 5.0)
    assert float(keras.ops.convert_to_numpy(weight.kernel)[0, 0]) == pytest.approx(at_step_10)


def test_warmup_and_nesterov_from_params(params_dict):
    params_dict["scratch"].update(optimizer="sgd", nesterov=True, warmup_epochs=0.5, lr_schedule="constant")
    config = params_from_dict(params_dict).scratch
    optimizer = fitting.make_optimizer(config, steps_per_epoch=10)
    assert optimizer.nesterov is True
    assert float(optimizer.learning_rate) == pytest.approx(config.learning_rate / 5)  # step 0 of a 5-step warm-up


def test_warmup_with_a_schedule_that_has_its_own_is_refused(params_dict):
    params_dict["scratch"].update(warmup_epochs=1.0, lr_schedule="one_cycle")
    with pytest.raises(ConfigError, match="warmup_epochs"):
        params_from_dict(params_dict)


def test_flip_test_time_augmentation_averages_an_image_and_its_mirror():
    inputs = keras.Input(shape=(4, 4, 1))
    # Scores depend on where the bright pixels are, so an image and its mirror get different scores.
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(3).uniform(0, 1, (5, 4, 4, 1)).astype("float32")
    batches = [(images, np.eye(2)[[0, 1, 0, 1, 0]], np.arange(5))]
    plain = evaluate.predict(model, batches).probabilities
    mirrored = evaluate.predict(model, [(images[:, :, ::-1], *batches[0][1:])]).probabilities
    augmented = evaluate.predict(model, batches, flip=True).probabilities
    assert not np.allclose(plain, mirrored)
    np.testing.assert_allclose(augmented, (plain + mirrored) / 2, atol=1e-6)


def test_profiles_are_valid_overrides(params_dict):
    for path in sorted(Path(PROFILES).glob("*.yaml")):
        profile_params(params_dict, path.name)


@pytest.mark.integration
@pytest.mark.slow(seconds=35)
def test_train_scratch_stage_fits_the_residual_net_with_whitening_from_training_pixels(tmp_path, new_mlflow_store):
    """The real stage: whitening computed from the prepared training split before fitting, model saved and loadable."""
    import os
    import subprocess
    import sys

    from imgclf.data import preprocess, sources
    from imgclf.training import scratch

    base = smoke_copy.merge(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()),
                         {"data": {"source": "synthetic"}, "preprocess": {"min_images_per_class": 5},
                          "mlflow": {"experiment": "imgclf-tests"}})
    base = smoke_copy.merge(base, yaml.safe_load((PROFILES / "scratch_residual.yaml").read_text()))
    base["scratch"].update(residual_widths=[16, 32, 32], epochs=2, batch_size=32, warmup_epochs=1.0,
                           learning_rate=0.1, lookahead=True)  # the stage wires lookahead in too
    params = params_from_dict(base)
    sources.fetch_source(source="synthetic", path=None, sha256=None, raw_dir=tmp_path / "raw",
                         download_dir=tmp_path / "downloads", seed=params.seed, synthetic_classes=4,
                         synthetic_per_class=60, synthetic_image_size=32)
    preprocess.run(params, raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared", workers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "stages.train_scratch", "--params", str(tmp_path / "params.yaml"),
                             "--data", str(tmp_path / "prepared"), "--out", str(tmp_path / "model")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "MLFLOW_TRACKING_URI": new_mlflow_store(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    model = model_io.load_model(tmp_path / "model" / artifacts.MODEL_FILE)
    assert model.name == "scratch_residual"
    meta = artifacts.read_prepared_meta(tmp_path / "prepared")
    pixels = scratch.training_pixels(tmp_path / "prepared", image_shape=meta.image_shape,
                                     train_count=meta.counts["train"], seed=params.seed)
    kernel, bias = scratch_model.patch_whitening_weights(pixels)
    # Same images in another order: float32 sums differ in the last bits, which the weakest eigen-directions
    # (divided by the square root of tiny eigenvalues) amplify to ~0.05 on weights of up to ~10; a random
    # placeholder kernel (about +-0.3, zero bias) is nowhere near.
    saved_kernel, saved_bias = model.get_layer(scratch_model.WHITEN_LAYER).get_weights()
    np.testing.assert_allclose(saved_kernel, kernel, rtol=0.02, atol=0.1)
    np.testing.assert_allclose(saved_bias, bias, rtol=0.02, atol=0.1)


def test_whitening_sample_covers_every_class_of_the_class_sorted_shards(tmp_path, write_prepared, monkeypatch):
    """The whitening sample is uniform over the whole training split: the shards hold it sorted by class, and a
    sample from their head (a shuffle buffer smaller than the split) held CIFAR-10's classes 0-5 only."""
    from imgclf.data import tfdata
    from imgclf.training import scratch

    monkeypatch.setattr(tfdata, "SHUFFLE_BUFFER", 50)  # a split far larger than the buffer, as CIFAR-10's is

    class_names = [f"class{i}" for i in range(10)]
    meta = write_prepared(tmp_path, class_names=class_names, per_class={"train": 40, "val": 2, "test": 2})
    pixels = scratch.training_pixels(tmp_path, image_shape=(8, 8, 3), train_count=meta["counts"]["train"], seed=3,
                                     count=100)
    assert pixels.shape == (100, 8, 8, 3) and pixels.dtype == np.uint8
    # Each class has its own colour (red channel label * 70 mod 256, +-20 noise): read the class back from it.
    colours = np.arange(10) * 70 % 256
    red = pixels[..., 0].reshape(len(pixels), -1).mean(axis=1)
    classes = np.abs(red[:, None] - colours[None, :]).argmin(axis=1)
    assert set(classes.tolist()) == set(range(10))
    again = scratch.training_pixels(tmp_path, image_shape=(8, 8, 3), train_count=400, seed=3, count=100)
    np.testing.assert_array_equal(pixels, again)  # seeded


def test_whitening_sample_refuses_shards_of_another_image_size(tmp_path, write_prepared):
    from imgclf.data import records
    from imgclf.training import scratch

    meta = write_prepared(tmp_path, class_names=["a", "b"], per_class={"train": 5, "val": 1, "test": 1})
    with pytest.raises(records.CorruptShardError, match="different preprocess runs"):
        scratch.training_pixels(tmp_path, image_shape=(4, 4, 3), train_count=meta["counts"]["train"], seed=0)


def test_the_bench_test_accuracy_probe_scores_the_test_split_with_and_without_flip_tta(tmp_path, write_prepared):
    """bench/probes.py's test accuracy, which every timed training benchmark ends with, against the model's own
    predictions on the same pixels: its import, the split it reads, label order, and the mirror's axis."""
    from bench import probes

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (2 * 12, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], 12)
    write_prepared(tmp_path / "prepared", class_names=["a", "b"], per_class={"test": 12}, pixels={"test": pixels})
    # The layer's own seed, not the global one: a global seed of 0 would outlive this test in its worker.
    dense = keras.layers.Dense(2, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed=1))
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    model_io.save_model(model, tmp_path / "model.keras")

    images = pixels.astype("float32")
    scores = model.predict(images, verbose=0)
    mirrored = (scores + model.predict(images[:, :, ::-1], verbose=0)) / 2
    expected = {False: np.mean(scores.argmax(1) == labels), True: np.mean(mirrored.argmax(1) == labels)}
    assert expected[False] != expected[True]  # so a mirror on the wrong axis, or none, would show
    for tta_flip, accuracy in expected.items():
        assert probes.test_accuracy(model=str(tmp_path / "model.keras"), prepared=str(tmp_path / "prepared"),
                                    features=None, tta_flip=tta_flip) == pytest.approx(accuracy)
