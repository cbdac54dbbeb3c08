"""Decoding policy: any mode to 8-bit RGB, three resize policies, unreadable files give a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgclf.data import images


def _save(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_8bit_rgb(tmp_path, mode):
    image = Image.new(mode, (40, 30))
    suffix = "tiff" if mode in ("CMYK",) else "png"
    path = _save(tmp_path, image, f"image.{suffix}")
    pixels = images.decode_file(path, image_size=16, resize="pad")
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8


def test_16bit_is_scaled_by_bit_depth_not_clipped(tmp_path):
    array = np.full((8, 8), 65535, dtype=np.uint16)
    array[:, :4] = 32768
    path = _save(tmp_path, Image.fromarray(array), "deep.png")
    pixels = images.decode_file(path, image_size=8, resize="stretch")
    assert pixels[0, 0, 0] == 128 and pixels[0, 7, 0] == 255


def test_transparency_is_composited_on_white(tmp_path):
    path = _save(tmp_path, Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "clear.png")
    assert (images.decode_file(path, image_size=8, resize="pad") == 255).all()


def test_grey_data_sets_stay_one_channel(tmp_path):
    path = _save(tmp_path, Image.new("L", (28, 28), 200), "digit.png")
    pixels = images.decode_file(path, image_size=28, resize="pad", channels=1)
    assert pixels.shape == (28, 28, 1) and pixels[0, 0, 0] == 200


def test_resize_policies_on_a_wide_image():
    wide = Image.new("RGB", (40, 20), (255, 255, 255))
    padded = images.to_pixels(wide, image_size=20, resize="pad")
    cropped = images.to_pixels(wide, image_size=20, resize="crop")
    stretched = images.to_pixels(wide, image_size=20, resize="stretch")
    assert padded.shape == cropped.shape == stretched.shape == (20, 20, 3)
    assert padded[0, 10].sum() == 0 and padded[10, 10].min() == 255  # black bars above and below
    assert cropped.min() == 255 and stretched.min() == 255


def test_native_size_is_not_resampled():
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    assert images.resize_array(pixels, image_size=32, resize="pad") is pixels


def test_truncated_and_garbage_files_raise_a_reason(tmp_path):
    good = _save(tmp_path, Image.new("RGB", (64, 64), (10, 20, 30)), "good.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:100])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(images.ImageDecodeError) as error:
            images.decode_file(path, image_size=16, resize="pad")
        assert str(error.value)
