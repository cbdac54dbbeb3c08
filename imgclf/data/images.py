"""Decoding any image file into fixed-size uint8 pixels, by a documented policy.

Mode policy: every image becomes 8-bit RGB (or stays 8-bit grey when the data set is grey, like MNIST).
Palette and grey images are expanded; transparency is composited onto white (what a viewer shows);
16-bit and 32-bit integer images are scaled to 0-255 by their bit depth, not clipped; CMYK and YCbCr are
converted by Pillow.

Resize policy (`preprocess.resize`), to a square `image_size`:
- `pad`: scale the longer side to `image_size`, keep the aspect ratio, pad the rest with black;
- `crop`: scale the shorter side to `image_size` and cut the centre;
- `stretch`: scale both sides to `image_size`, distorting the aspect ratio.
Images already at the target size are not resampled.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

# A decompression bomb is refused by Pillow beyond this many pixels; photos are far smaller.
Image.MAX_IMAGE_PIXELS = 178_956_970
# The raster formats Pillow decodes in-process. Never every format Pillow knows: it hands PostScript (EPS) to the
# Ghostscript program, so a file named photo.jpg would start an external program on untrusted bytes.
RASTER_FORMATS = ("BMP", "DIB", "GIF", "ICO", "JPEG", "MPO", "PCX", "PNG", "PPM", "SGI", "TGA", "TIFF", "WEBP")


class ImageDecodeError(ValueError):
    """An image file that cannot be read; the message is the reason shown in the skipped-files report."""


def decode_file(path: Path | BinaryIO, *, image_size: int, resize: str, channels: int = 3,
                max_pixels: int | None = None) -> np.ndarray:
    """Read `path` (a file, or bytes in a binary stream: served images) and return uint8 pixels of shape
    (image_size, image_size, channels). `max_pixels` (serving) refuses a larger image from its header, before
    anything is decoded: a 258 KB PNG can hold 13000x13000 pixels, 0.5 GB of RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_raster_formats()) as image:
                # JPEG draft mode decodes at a reduced scale when the target is much smaller: a large speedup
                # for photos, and the result is resampled below anyway.
                image.draft("RGB" if channels == 3 else "L", (image_size, image_size))
                width, height = image.size  # after draft: the pixels that load() will really decode
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageDecodeError(f"{width}x{height} pixels, past the limit of {max_pixels:,} per image; "
                                           "send a smaller image")
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_pixels(image, image_size=image_size, resize=resize, channels=channels)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as error:
        reason = str(error) or type(error).__name__
        raise ImageDecodeError(f"{type(error).__name__}: {reason}") from error


@functools.cache
def _raster_formats() -> tuple[str, ...]:
    """RASTER_FORMATS that this Pillow build decodes (`Image.open` fails on a name no plugin registered)."""
    Image.init()
    return tuple(name for name in RASTER_FORMATS if name in Image.OPEN)


def to_pixels(image: Image.Image, *, image_size: int, resize: str, channels: int = 3) -> np.ndarray:
    """Convert a Pillow image of any mode to uint8 pixels at the target size (see the module docstring)."""
    image = _to_8bit(image, channels=channels)
    image = _resize(image, image_size=image_size, policy=resize)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., np.newaxis] if pixels.ndim == 2 else pixels


def resize_array(pixels: np.ndarray, *, image_size: int, resize: str) -> np.ndarray:
    """Apply the resize policy to an array source (CIFAR, MNIST): a no-op at the native size."""
    if pixels.shape[0] == image_size and pixels.shape[1] == image_size:
        return pixels
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode)
    return to_pixels(image, image_size=image_size, resize=resize, channels=pixels.shape[-1])


def _to_8bit(image: Image.Image, *, channels: int) -> Image.Image:
    target = "RGB" if channels == 3 else "L"
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if image.mode == "F":
            if not np.isfinite(array).all():  # NaN would turn the whole image black (max() is NaN), silently
                raise ValueError("a float image with NaN or infinite pixels; fix or remove the file")
            # Float images come as [0, 1] or [0, 255]; the maximum tells which.
            array = np.clip(array * (255.0 if array.max(initial=0.0) <= 1.0 else 1.0), 0, 255)
        else:
            bits = 16 if image.mode.startswith("I;16") or array.max(initial=0) <= 65535 else 32
            array = array.astype(np.float64) * (255.0 / (2**bits - 1))
        image = Image.fromarray(np.round(array).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(target) if image.mode != target else image


def _resize(image: Image.Image, *, image_size: int, policy: str) -> Image.Image:
    if image.size == (image_size, image_size):
        return image
    resample = Image.Resampling.BICUBIC if min(image.size) < image_size else Image.Resampling.LANCZOS
    if policy == "stretch":
        return image.resize((image_size, image_size), resample)
    if policy == "crop":
        return ImageOps.fit(image, (image_size, image_size), method=resample)
    if policy == "pad":
        return ImageOps.pad(image, (image_size, image_size), method=resample, color=0)
    raise ValueError(f"unknown resize policy {policy!r}; use pad, crop or stretch")
