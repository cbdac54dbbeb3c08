"""ShiftedBatchNorm, the residual net's norm: the same function as Keras' BatchNorm then ScaledBias (forward,
gradients, moving statistics, inference, re-estimation, saving), in one fused kernel on TensorFlow."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from imgclf import model_io
from imgclf.training import fitting

MULTIPLIER, MOMENTUM, EPSILON = 8.0, 0.9, 1e-12
SHAPE = (5, 5, 6)


def two_layers() -> tuple[keras.Model, keras.Model]:
    """The residual net's norm as it was (Keras' BatchNorm, then ScaledBias) and as it is, with the same bias."""
    inputs = keras.Input(SHAPE)
    norm = keras.layers.BatchNormalization(center=False, scale=False, momentum=MOMENTUM, epsilon=EPSILON)(inputs)
    before = keras.Model(inputs, model_io.ScaledBias(MULTIPLIER)(norm))
    inputs = keras.Input(SHAPE)
    after = keras.Model(inputs, model_io.ShiftedBatchNorm(MULTIPLIER, momentum=MOMENTUM, epsilon=EPSILON)(inputs))
    bias = np.random.default_rng(1).normal(size=SHAPE[-1]).astype("float32")
    before.layers[-1].bias.assign(bias)
    after.layers[-1].bias.assign(bias)
    return before, after


def forward_and_gradients(model: keras.Model, x: tf.Tensor, weights: tf.Tensor):
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = model(x, training=True)
        loss = tf.reduce_sum(tf.cast(outputs, "float32") * weights)
    bias = next(variable for variable in model.trainable_variables if "bias" in variable.path)
    input_gradient, bias_gradient = tape.gradient(loss, [x, bias])
    return [np.asarray(tf.cast(value, "float32")) for value in (outputs, input_gradient, bias_gradient)]


def moving_statistics(model: keras.Model) -> list[np.ndarray]:
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    return [np.asarray(norm.moving_mean), np.asarray(norm.moving_variance)]


@pytest.mark.parametrize(("precision", "tolerance"), [("float32", 1e-4), ("mixed_bfloat16", 5e-2)])
def test_shifted_batch_norm_is_keras_batch_norm_then_scaled_bias(precision, tolerance):
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        before, after = two_layers()
        rng = np.random.default_rng(0)
        dtype = keras.mixed_precision.dtype_policy().compute_dtype
        x = tf.constant(3.0 + 2.0 * rng.normal(size=(16, *SHAPE)), dtype=dtype)
        weights = tf.constant(rng.normal(size=(16, *SHAPE)), dtype="float32")
        for old, new in zip(forward_and_gradients(before, x, weights), forward_and_gradients(after, x, weights),
                            strict=True):
            np.testing.assert_allclose(new, old, rtol=tolerance, atol=tolerance * max(1.0, np.abs(old).max()))
        # One training call moved both layers' moving statistics the same way (population variance, momentum).
        for old, new in zip(moving_statistics(before), moving_statistics(after), strict=True):
            np.testing.assert_allclose(new, old, rtol=tolerance)
        inference = [np.asarray(tf.cast(model(x, training=False), "float32")) for model in (before, after)]
        np.testing.assert_allclose(inference[1], inference[0], rtol=tolerance, atol=tolerance)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_on_tensorflow_training_and_inference_run_one_fused_kernel():
    _, after = two_layers()
    layer = after.layers[-1]
    for training in (True, False):
        graph = tf.function(lambda x, training=training: layer(x, training=training)).get_concrete_function(
            tf.TensorSpec((None, *SHAPE), "float32")).graph
        operations = {operation.type for operation in graph.get_operations()}
        assert "FusedBatchNormV3" in operations
        assert not operations & {"Mean", "SquaredDifference", "Rsqrt"}  # Keras' unfused path's ops


def test_batch_norm_reestimation_sets_the_population_statistics():
    _, after = two_layers()
    rng = np.random.default_rng(2)
    batches = [(1.0 + 4.0 * rng.normal(size=(32, *SHAPE))).astype("float32") for _ in range(3)]
    assert fitting.reestimate_batch_norm(after, batches) == 96
    mean, variance = moving_statistics(after)
    per_batch = [(batch.mean(axis=(0, 1, 2)), batch.var(axis=(0, 1, 2))) for batch in batches]
    np.testing.assert_allclose(mean, np.mean([entry[0] for entry in per_batch], axis=0), rtol=1e-4)
    np.testing.assert_allclose(variance, np.mean([entry[1] for entry in per_batch], axis=0), rtol=1e-4)


def test_shifted_batch_norm_round_trips_through_a_keras_file(tmp_path):
    _, after = two_layers()
    after.layers[-1].moving_mean.assign(np.full(SHAPE[-1], 0.5, "float32"))
    path = tmp_path / "norm.keras"
    after.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.layers[-1]
    assert isinstance(layer, model_io.ShiftedBatchNorm)
    assert (layer.multiplier, layer.momentum, layer.epsilon, layer.center, layer.scale) == (
        MULTIPLIER, MOMENTUM, EPSILON, False, False)
    x = np.random.default_rng(3).normal(size=(4, *SHAPE)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(after(x)), rtol=1e-6)
