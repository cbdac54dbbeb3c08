"""The synthetic source: small striped RGB images generated from the seed, written as an image folder."""

from __future__ import annotations

import colorsys
import hashlib
import math
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf import fileio
from imgclf.data.formats import raw
from imgclf.errors import DataSourceError


def synthetic_class_names(num_classes: int) -> list[str]:
    """`class_0`, `class_1`, ... zero-padded so that sorting the names keeps the label order."""
    width = len(str(num_classes - 1))
    return [f"class_{label:0{width}d}" for label in range(num_classes)]


def synthetic_image(rng: np.random.Generator, label: int, num_classes: int, size: int) -> np.ndarray:
    """One uint8 RGB image of class `label`: stripes whose hue, angle and spacing depend on the class.

    Phase (a random shift), background, brightness and pixel noise vary per image, so a model has to learn
    the class pattern rather than memorise pixels; the hue alone already separates a few classes.
    """
    colour = 255.0 * np.array(colorsys.hsv_to_rgb(label / num_classes, 0.85, 0.95))
    angle = (label % 4) * math.pi / 4
    period = size / (2.0 + (label // 4) % 3)  # 2, 3 or 4 stripes across the image
    rows, cols = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0.0, 2.0 * math.pi)
    distance = cols * math.cos(angle) + rows * math.sin(angle)
    wave = 0.5 + 0.5 * np.sin(2.0 * math.pi * distance / period + phase)
    background = rng.uniform(0.0, 60.0, size=3)
    foreground = colour * rng.uniform(0.75, 1.0)
    image = background + wave[..., np.newaxis] * (foreground - background)
    image += rng.normal(0.0, 12.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write(staging: Path, *, seed: int, num_classes: int, per_class: int, image_size: int) -> dict:
    """Generate the images into staging/images/{train,test}/<class>/; return source.json's keys."""
    if num_classes < 2 or per_class < 1 or image_size < 8:
        raise DataSourceError("the synthetic source needs data.synthetic_classes >= 2, "
                              "data.synthetic_per_class >= 1 and data.synthetic_image_size >= 8")
    rng = np.random.default_rng(seed)
    class_names = synthetic_class_names(num_classes)
    counts = {"train": per_class, "test": max(1, per_class // 4)}
    manifest = hashlib.sha256()
    for split in raw.SPLITS:
        for label, name in enumerate(class_names):
            folder = staging / "images" / split / name
            folder.mkdir(parents=True)
            for number in range(counts[split]):
                file = folder / f"{number:04d}.png"
                Image.fromarray(synthetic_image(rng, label, num_classes, image_size)).save(file, format="PNG")
                relative = file.relative_to(staging).as_posix()
                manifest.update(f"{fileio.sha256_file(file)}  {relative}\n".encode())
    return raw.source_info(format_name="image_folder", class_names=class_names, channels=3,
                           sha256=manifest.hexdigest(), origin=f"synthetic(seed={seed})", has_test_split=True,
                           num_examples={split: counts[split] * num_classes for split in raw.SPLITS},
                           train_dir="images/train", test_dir="images/test")

