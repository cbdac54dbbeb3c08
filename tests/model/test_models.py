"""Model builders: the seed CNN exactly, backbone input scaling, the transfer model end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest

from imgclf import errors, model_io
from imgclf.config import params_from_dict
from imgclf.entry_points import PROJECT_ROOT
from imgclf.training import backbones, features, recipe, scratch_model, transfer_model

# About, under make test (two processes import TensorFlow): orders the modules.
pytestmark = pytest.mark.duration(seconds=25)


def load_backbone(config):
    """What extract_features does: the backbone check_params resolved (data/backbone.json), then built."""
    return features.load_backbone(backbones.resolve(config), config)


def test_seed_cnn_has_the_write_up_parameter_count(params_dict):
    params = params_from_dict(params_dict)
    model = scratch_model.build_scratch_model(params.scratch, input_shape=(32, 32, 3), num_classes=10)
    assert model.count_params() == 2_264_458


def test_seed_cnn_layer_order(params_dict):
    model = scratch_model.build_scratch_model(params_from_dict(params_dict).scratch, input_shape=(32, 32, 3),
                                       num_classes=10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[:5] == ["Rescaling", "Conv2D", "Dropout", "BatchNormalization", "Conv2D"]
    assert kinds[5:8] == ["MaxPooling2D", "Dropout", "BatchNormalization"]
    assert kinds[-1] == "Dense" and model.layers[-1].activation.__name__ == "softmax"
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"][:2]
    assert all(isinstance(layer.kernel_constraint, keras.constraints.MaxNorm) for layer in dense)


def test_smaller_model_is_a_params_change(params_dict):
    params_dict["scratch"].update(conv_filters=[32, 64], pool_after=[1, 2], dense_units=[128])
    model = scratch_model.build_scratch_model(params_from_dict(params_dict).scratch, input_shape=(28, 28, 1),
                                       num_classes=3)
    assert model.output_shape == (None, 3) and model.count_params() < 2_264_458


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch", "none"])
def test_backbone_input_matches_keras_applications(mode):
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, 4, 4, 3)).astype("float32")
    ours = np.asarray(model_io.BackboneInput(mode)(pixels))
    if mode == "none":
        expected = pixels
    else:
        expected = keras.applications.imagenet_utils.preprocess_input(pixels.copy(), mode=mode)
    np.testing.assert_allclose(ours, np.asarray(expected), rtol=1e-5, atol=1e-4)


def test_grey_images_get_three_channels():
    grey = np.full((1, 4, 4, 1), 10.0, dtype="float32")
    assert model_io.BackboneInput("none")(grey).shape == (1, 4, 4, 3)


def test_unknown_backbone_lists_the_choices(params_dict):
    params_dict["transfer"]["backbone"] = "resnet5O"
    with pytest.raises(errors.ModelConfigError, match="resnet50"):
        load_backbone(params_from_dict(params_dict).transfer)


def test_missing_backbone_file_says_so(params_dict, tmp_path):
    params_dict["transfer"]["backbone"] = str(tmp_path / "absent.keras")
    with pytest.raises(errors.ModelConfigError, match="not found"):
        load_backbone(params_from_dict(params_dict).transfer)


def test_transfer_model_round_trips_through_a_keras_file(tiny_params_dict, tmp_path):
    config = params_from_dict(tiny_params_dict).transfer
    backbone, mode = load_backbone(config)
    extractor = transfer_model.build_feature_extractor(backbone, mode, input_shape=(24, 24, 3), input_size=32)
    pixels = np.random.default_rng(1).uniform(0, 255, size=(2, 24, 24, 3)).astype("float32")
    head = transfer_model.build_head(config, train_features=np.asarray(extractor(pixels)), num_classes=3)
    model = transfer_model.assemble_transfer_model(extractor, head)
    before = np.asarray(model(pixels, training=False))
    model.save(tmp_path / "model.keras")
    after = np.asarray(model_io.load_model(tmp_path / "model.keras")(pixels, training=False))
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-6)
    assert before.shape == (2, 3)


@pytest.mark.shared
def test_local_keras_backbone_file(params_dict, shared_backbone):
    params_dict["transfer"].update(backbone=str(shared_backbone), input_size=96)
    backbone, mode = load_backbone(params_from_dict(params_dict).transfer)
    extractor = transfer_model.build_feature_extractor(backbone, mode, input_shape=(32, 32, 3), input_size=96)
    assert mode == "none" and extractor.output_shape == (None, 1280)


def test_head_does_not_blow_up_a_feature_constant_in_training(tiny_params_dict, tmp_path):
    # Feature 0 varies; feature 1 is a ReLU unit no training image switches on, as 110 of the 2,048 features of
    # a random ResNet50 (the smoke run's backbone then) were: a validation image with 0.14 there got a z-score of
    # 1e5 and the head a validation loss of 554.
    rng = np.random.default_rng(0)
    train = np.stack([rng.normal(3.0, 2.0, 64), np.zeros(64)], axis=1).astype("float32")
    head = transfer_model.build_head(params_from_dict(tiny_params_dict).transfer, train_features=train, num_classes=2)
    standardize = keras.Model(head.input, head.get_layer("standardize").output)
    validation = np.array([[3.0 + 2.0, 0.14]], "float32")
    z = np.asarray(standardize(validation))[0]
    assert z[0] == pytest.approx((5.0 - train[:, 0].mean()) / train[:, 0].std(), rel=0.05), "varying: a z-score"
    typical = np.sqrt(train.var(axis=0).mean())
    floor = transfer_model.HEAD_MIN_STD_FRACTION * typical
    assert abs(z[1]) <= 0.14 / floor + 1e-6 < 2, "a dead feature is not scaled up"
    head.save(tmp_path / "head.keras")  # the floor is in the saved variables, not only in this process
    np.testing.assert_allclose(np.asarray(model_io.load_model(tmp_path / "head.keras")(validation)),
                               np.asarray(head(validation)), rtol=1e-5)


def _saved_groups(path) -> set[str]:
    """The top-level groups of a `.keras` file's weights (`layers`, and `optimizer` when it carries one)."""
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as weights, h5py.File(weights) as store:
        return set(store.keys())


def test_a_saved_model_keeps_its_weights_and_drops_the_optimizer_state(params_dict, tmp_path):
    config = params_from_dict(params_dict).scratch
    model = scratch_model.build_scratch_model(config, input_shape=(16, 16, 3), num_classes=3)
    recipe.compile_model(model, config, steps_per_epoch=1, jit_compile=False)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, size=(8, 16, 16, 3)).astype("float32")
    model.fit(pixels, keras.utils.to_categorical(np.arange(8) % 3, 3), verbose=0)
    model.save(tmp_path / "keras.keras")  # Keras' own: weights and Adam's two moments of each
    model_io.save_model(model, tmp_path / "model.keras")

    assert "optimizer" in _saved_groups(tmp_path / "keras.keras")
    assert "optimizer" not in _saved_groups(tmp_path / "model.keras")
    weight_bytes = 4 * model.count_params()
    assert (tmp_path / "keras.keras").stat().st_size > 2.9 * weight_bytes
    assert (tmp_path / "model.keras").stat().st_size < 1.05 * weight_bytes
    restored = model_io.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(np.asarray(restored(pixels, training=False)), np.asarray(model(pixels, training=False)),
                               rtol=1e-5, atol=1e-6)


def test_saving_over_a_hard_link_replaces_it_and_leaves_the_linked_file_alone(tmp_path):
    # With DVC's hardlink cache, models/*/model.keras is the cache entry's second name: writing into it would
    # change the cached model of every experiment that shares it.
    cached = tmp_path / "cache" / "entry"
    cached.parent.mkdir()
    cached.write_bytes(b"an earlier model")
    os.link(cached, tmp_path / "model.keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model_io.save_model(model, tmp_path / "model.keras")
    assert cached.read_bytes() == b"an earlier model"
    assert (tmp_path / "model.keras").stat().st_ino != cached.stat().st_ino
    assert model_io.load_model(tmp_path / "model.keras").output_shape == (None, 2)


SAVE_A_MODEL = """
import sys

import keras

from imgclf import errors
from imgclf import model_io
from imgclf.training import backbones
from imgclf.training import scratch_model
from imgclf.training import transfer_model
from imgclf.training import features

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((3,), name="pixels"), keras.layers.Dense(2, name="dense")], name="m")
model_io.save_model(model, sys.argv[1])
"""


def test_the_same_model_saved_by_two_processes_is_the_same_bytes(tmp_path):
    # Keras writes the time of saving and the memory addresses of shared objects (the model's dtype policy) into
    # the file: an unchanged extractor was a new DVC cache entry at every rerun, and the registry's same-file
    # check never matched. Each process imports TensorFlow first: the two saves are seconds apart.
    for name in ("first.keras", "second.keras"):
        subprocess.run([sys.executable, "-c", SAVE_A_MODEL, str(tmp_path / name)], cwd=PROJECT_ROOT, check=True,
                       capture_output=True, timeout=120)
    assert (tmp_path / "first.keras").read_bytes() == (tmp_path / "second.keras").read_bytes()
    assert model_io.load_model(tmp_path / "second.keras").get_layer("dense").get_weights()[0].shape == (3, 2)
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")], "no temporary left behind"
