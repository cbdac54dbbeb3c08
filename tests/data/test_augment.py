"""The augmentation policy: `augment.interpolation: nearest` shifts by whole pixels, `bilinear` blends them."""

from __future__ import annotations

import numpy as np

from imgclf.config import AugmentConfig
from imgclf.data.augment import build_augmentation

SIZE, MAX_SHIFT = 16, 2


def reflect_shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`image` moved by (dy, dx) whole pixels, the uncovered border filled by reflection (as Keras' "reflect")."""
    padded = np.pad(image, ((MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT), (0, 0)), mode="symmetric")
    return padded[MAX_SHIFT - dy:MAX_SHIFT - dy + SIZE, MAX_SHIFT - dx:MAX_SHIFT - dx + SIZE]


def whole_pixel_shift(original: np.ndarray, augmented: np.ndarray) -> tuple[int, int] | None:
    return next(((dy, dx) for dy in range(-MAX_SHIFT, MAX_SHIFT + 1) for dx in range(-MAX_SHIFT, MAX_SHIFT + 1)
                 if np.array_equal(reflect_shifted(original, dy, dx), augmented)), None)


def shifted_batch(interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    config = AugmentConfig(enabled=True, flip="none", translate=MAX_SHIFT / SIZE, interpolation=interpolation)
    images = np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3)).astype("float32")
    return images, np.asarray(build_augmentation(config, seed=7)(images, training=True))


def test_nearest_shifts_each_image_by_its_own_whole_pixels_and_keeps_them_sharp():
    images, augmented = shifted_batch("nearest")
    shifts = [whole_pixel_shift(original, moved) for original, moved in zip(images, augmented, strict=True)]
    assert None not in shifts, "every image is an exact whole-pixel shift of itself, no pixel blended"
    assert len(set(shifts)) > 5, f"shifts drawn per image, not one per batch: {sorted(set(shifts))}"
    assert any(dy != 0 or dx != 0 for dy, dx in shifts)


def test_bilinear_blends_neighbouring_pixels_on_sub_pixel_shifts():
    images, augmented = shifted_batch("bilinear")
    blended = [whole_pixel_shift(original, moved) is None for original, moved in zip(images, augmented, strict=True)]
    assert sum(blended) > len(images) // 2, "sub-pixel shifts interpolate between pixels (the blur nearest avoids)"
    assert not np.array_equal(augmented, np.round(augmented)), "blended pixels fall between the integer values"
