"""The augmentation policy from params, as Keras preprocessing layers applied on the fly in training."""

from __future__ import annotations

import keras

from imgclf.config import AugmentConfig


def build_augmentation(config: AugmentConfig, *, seed: int) -> keras.Sequential | None:
    """A `keras.Sequential` of random layers for the configured policy, or None when it changes nothing.

    Layers take float pixels in [0, 255] and are active only when called with `training=True`. Shifts, rotations
    and zooms resample with `config.interpolation`: bilinear blends neighbouring pixels, so a sub-pixel shift
    blurs the image the model trains on while the test images stay sharp; nearest moves whole pixels, which for
    a shift is a random crop of the reflect-padded image (airbench's augmentation).
    """
    layers: list[keras.layers.Layer] = []
    # Alternating flips depend on the epoch and the image, which only the input pipeline knows
    # (tfdata.make_dataset's `alternate_flips`): no layer here.
    if config.flip not in ("none", "alternating"):
        layers.append(keras.layers.RandomFlip(config.flip, seed=seed))
    if config.translate > 0:
        layers.append(keras.layers.RandomTranslation(config.translate, config.translate, fill_mode="reflect",
                                                     interpolation=config.interpolation, seed=seed + 1))
    if config.rotate > 0:
        layers.append(keras.layers.RandomRotation(config.rotate, fill_mode="reflect",
                                                  interpolation=config.interpolation, seed=seed + 2))
    if config.zoom > 0:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", interpolation=config.interpolation,
                                              seed=seed + 3))
    if config.contrast > 0:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed + 4))
    return keras.Sequential(layers, name="augmentation") if layers else None


def alternates_flips(config: AugmentConfig) -> bool:
    """Whether training flips each image in every other epoch (`flip: alternating`, augmentation on): the input
    pipeline's job (tfdata.make_dataset's `alternate_flips`), not a layer's."""
    return config.enabled and config.flip == "alternating"
