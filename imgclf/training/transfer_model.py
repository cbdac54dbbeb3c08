"""The transfer model in pure `keras` (any backend): the feature extractor around a frozen ImageNet backbone
(resize, the backbone's own input scaling, pooling), the head trained on its cached features, and the two
assembled into one model that takes raw [0, 255] pixels. Custom layers live in `imgclf.model_io`."""

from __future__ import annotations

import keras
import numpy as np

from imgclf.config import TransferConfig
from imgclf.model_io import BackboneInput


def build_feature_extractor(backbone: keras.Model, preprocessing: str, *,
                            input_shape: tuple[int, int, int], input_size: int) -> keras.Model:
    """Raw pixels -> resize to the backbone's input size -> backbone (inference mode) -> pooled features."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    pixels = inputs
    if input_shape[0] != input_size or input_shape[1] != input_size:
        pixels = keras.layers.Resizing(input_size, input_size, interpolation="bilinear", name="upsample")(pixels)
    pixels = BackboneInput(preprocessing, name="backbone_input")(pixels)
    # training=False keeps BatchNorm statistics frozen even when the backbone is later fine-tuned.
    feature_map = backbone(pixels, training=False)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(feature_map)
    return keras.Model(inputs, features, name="feature_extractor")

# A training feature's standard deviation counts as at least this fraction of the typical one (build_head).
HEAD_MIN_STD_FRACTION = 0.1


def build_head(config: TransferConfig, *, train_features: np.ndarray, num_classes: int) -> keras.Model:
    """The new classifier trained on cached features: Standardize -> Dropout -> [Dense ReLU] -> Dense softmax.

    Standardising with the training features' mean and variance makes the head's learning rate work for
    every backbone, whatever the scale of its features. A feature (nearly) constant in training, such as a ReLU
    unit no training image switches on (common with few images or a randomly initialised backbone), is not
    scaled up by the inverse of its tiny spread: that turned a small activation on a validation image into a
    z-score of 1e5 and a validation loss in the hundreds. Its spread is floored at `HEAD_MIN_STD_FRACTION` of
    the features' typical (root-mean-square) standard deviation.
    """
    inputs = keras.Input(shape=(train_features.shape[1],), name="features")
    normalize = keras.layers.Normalization(axis=-1, name="standardize")
    normalize.adapt(train_features)
    variance = keras.ops.convert_to_numpy(normalize.adapt_variance)
    floor = HEAD_MIN_STD_FRACTION ** 2 * float(variance.mean())
    if floor > 0:  # all features constant: nothing to learn from, and nothing to floor against
        normalize.adapt_variance.assign(np.maximum(variance, floor))
        normalize.finalize_state()  # the layer computes with constants derived from the adapted variables
    hidden = keras.layers.Dropout(config.head_dropout, name="head_dropout")(normalize(inputs))
    if config.head_units:
        hidden = keras.layers.Dense(config.head_units, activation="relu", name="head_dense")(hidden)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier")(hidden)
    return keras.Model(inputs, outputs, name="head")


def assemble_transfer_model(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """One end-to-end model, raw pixels to class probabilities, for evaluation and deployment."""
    inputs = keras.Input(shape=extractor.input_shape[1:], name="pixels")
    return keras.Model(inputs, head(extractor(inputs)), name="transfer")
