"""The from-scratch architectures in pure `keras` (any backend): the write-up's seed CNN and the airbench-shaped
residual net (`scratch.architecture`). They take raw pixels in [0, 255] at the prepared image size, so a saved
`.keras` file classifies images with no preprocessing code beside it; custom layers live in `imgclf.model_io`."""

from __future__ import annotations

import keras
import numpy as np

from imgclf.config import ScratchConfig
from imgclf.errors import ModelConfigError
from imgclf.model_io import PartialIdentity, ShiftedBatchNorm


def build_scratch_model(config: ScratchConfig, *, input_shape: tuple[int, int, int],
                        num_classes: int) -> keras.Model:
    """The from-scratch model `scratch.architecture` names: the seed CNN or the residual net."""
    if config.architecture == "residual":
        return build_residual_model(config, input_shape=input_shape, num_classes=num_classes)
    return build_seed_cnn(config, input_shape=input_shape, num_classes=num_classes)


def build_seed_cnn(config: ScratchConfig, *, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The write-up's sequential CNN, layer by layer from params.

    Each conv block: Conv2D (3x3, same, ReLU) -> [MaxPool 2x2 if listed in pool_after] -> Dropout ->
    [BatchNorm]; then Flatten -> Dropout; each dense block: Dense (ReLU, MaxNorm) -> Dropout ->
    [BatchNorm]; then a softmax classifier. Seed values give 2,264,458 parameters on 32x32x3, 10 classes.
    """
    constraint = keras.constraints.MaxNorm(config.max_norm) if config.max_norm else None
    layers: list[keras.layers.Layer] = [keras.Input(shape=input_shape, name="pixels"),
                                        keras.layers.Rescaling(1.0 / 255, name="rescale")]
    for block, filters in enumerate(config.conv_filters, start=1):
        layers.append(keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}"))
        if block in config.pool_after:
            layers.append(keras.layers.MaxPooling2D(2, name=f"pool{block}"))
        layers.append(keras.layers.Dropout(config.dropout, name=f"conv{block}_dropout"))
        if config.batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"conv{block}_bn"))
    layers += [keras.layers.Flatten(name="flatten"), keras.layers.Dropout(config.dropout, name="flat_dropout")]
    for block, units in enumerate(config.dense_units, start=1):
        layers.append(keras.layers.Dense(units, activation="relu", kernel_constraint=constraint,
                                         name=f"dense{block}"))
        layers.append(keras.layers.Dropout(config.dropout, name=f"dense{block}_dropout"))
        if config.batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"dense{block}_bn"))
    # float32 probabilities even under a mixed-precision policy: a float16 softmax loses small classes.
    layers.append(keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier"))
    return keras.Sequential(layers, name="scratch_cnn")

WHITEN_LAYER = "whiten"

WHITEN_PATCH_SIZE = 2

# Added to the patch covariance's eigenvalues (in per-channel standardised units, as airbench) so that the
# near-zero directions are not amplified into noise.
WHITEN_EPSILON = 5e-4

# Keras' 0.99 needs hundreds of steps to forget the initial statistics; a 10-epoch run at batch 512 has ~900.
RESIDUAL_BATCH_NORM_MOMENTUM = 0.9

# airbench's BatchNorm epsilon. Weight decay shrinks the (scale-invariant) conv kernels by a factor of ten over a
# run, and the pre-norm variance with them: Keras' 1e-3 would then damp every channel, a hidden extra decay.
RESIDUAL_BATCH_NORM_EPSILON = 1e-12


def build_residual_model(config: ScratchConfig, *, input_shape: tuple[int, int, int],
                         num_classes: int) -> keras.Model:
    """An airbench94-shaped net: frozen patch-whitening 2x2 conv -> conv blocks -> global max -> scaled linear head.

    Each block: Conv 3x3 -> MaxPool 2x2 -> BatchNorm -> act -> Conv 3x3 -> BatchNorm -> act, with identity-
    initialised convs (`PartialIdentity`) and BatchNorm without a learned scale (it would only duplicate the
    next conv's) whose shift learns `residual_bias_lr_scale` times faster under SGD (`ShiftedBatchNorm`). The
    whitening layer's weights are a placeholder until `set_patch_whitening` computes them from training pixels
    (the training stage does; the model itself never sees the data layer).
    """
    channels = input_shape[-1]
    side = min(input_shape[0], input_shape[1]) - (WHITEN_PATCH_SIZE - 1)
    for _ in config.residual_widths:
        side //= 2
    if side < 1:
        raise ModelConfigError(f"scratch.residual_widths: {len(config.residual_widths)} blocks halve "
                               f"{input_shape[0]}x{input_shape[1]} images below one pixel; use fewer blocks or "
                               "larger images (preprocess.image_size)")
    activation = config.residual_activation
    bias_multiplier = float(np.sqrt(config.residual_bias_lr_scale))
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    whiten_filters = 2 * WHITEN_PATCH_SIZE * WHITEN_PATCH_SIZE * channels
    # Frozen: whitening is a fixed change of basis; training it would undo the conditioning it buys.
    x = keras.layers.Conv2D(whiten_filters, WHITEN_PATCH_SIZE, padding="valid", trainable=False,
                            name=WHITEN_LAYER)(x)
    x = keras.layers.Activation(activation, name="whiten_act")(x)
    for block, width in enumerate(config.residual_widths, start=1):
        for position in (1, 2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=PartialIdentity(),
                                    name=f"block{block}_conv{position}")(x)
            if position == 1:
                x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
            x = ShiftedBatchNorm(bias_multiplier, momentum=RESIDUAL_BATCH_NORM_MOMENTUM,
                                 epsilon=RESIDUAL_BATCH_NORM_EPSILON, name=f"block{block}_norm{position}")(x)
            x = keras.layers.Activation(activation, name=f"block{block}_act{position}")(x)
    x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, use_bias=False, name="classifier")(x)
    # A small constant on the logits stands in for a lower head learning rate (airbench's 1/9).
    logits = keras.layers.Rescaling(config.residual_head_scale, name="head_scale")(logits)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="scratch_residual")


def patch_whitening_weights(images: np.ndarray, *, patch_size: int = WHITEN_PATCH_SIZE,
                            epsilon: float = WHITEN_EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of a `patch_size` conv on [0, 1] pixels that whitens the patches of `images`.

    `images`: raw [0, 255] pixels, (N, H, W, C). The filters are the eigenvectors of the patches' covariance
    (channels standardised first, as airbench does), divided by the square root of their eigenvalues, each with
    its negative so that a following GELU/ReLU keeps both signs. The bias subtracts the mean patch.
    """
    pixels = np.asarray(images, dtype=np.float32) / 255.0
    if pixels.ndim != 4 or len(pixels) == 0:
        raise ValueError(f"patch whitening needs a non-empty (N, H, W, C) batch of images, got {pixels.shape}")
    channel_std = pixels.std(axis=(0, 1, 2)) + 1e-6
    windows = np.lib.stride_tricks.sliding_window_view(pixels / channel_std, (patch_size, patch_size), axis=(1, 2))
    # (N, H', W', C, kh, kw) -> rows in the (kh, kw, C) order of a Keras conv kernel
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, patch_size * patch_size * pixels.shape[-1])
    mean = patches.mean(axis=0, dtype=np.float64)
    centred = patches - mean.astype(np.float32)
    covariance = (centred.T.astype(np.float64) @ centred.astype(np.float64)) / max(1, len(centred) - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    filters = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + epsilon)  # columns: one filter each
    filters = np.concatenate([filters, -filters], axis=1)
    kernel = filters.reshape(patch_size, patch_size, pixels.shape[-1], -1)
    bias = -(mean @ filters)
    kernel = kernel / channel_std[None, None, :, None]  # fold the standardisation into the weights
    return kernel.astype(np.float32), bias.astype(np.float32)


def set_patch_whitening(model: keras.Model, images: np.ndarray) -> None:
    """Set the residual net's whitening layer from a batch of raw training images (call before fitting)."""
    layer = model.get_layer(WHITEN_LAYER)
    kernel, bias = patch_whitening_weights(images, patch_size=layer.kernel_size[0])
    layer.set_weights([kernel, bias])
