"""Benchmark: train/test duplicates in CIFAR-10 (the shared JPEG archive), found as the pipeline finds them.

Every image of the archive goes once through the shared EfficientNet-Lite0 backbone (96 px, pooled features,
as the extract_features stage caches them; cached under --cache so reruns skip it), then
`imgclf.data.duplicates` finds, for each test image, its most similar training image by blocked cosine
similarity, and every exact (pixel-identical) pair. Writes `bench/results/cifar10-duplicates.csv` (test_file,
train_file, similarity: paths inside the archive) and `bench/results/cifar10-duplicates.json` (counts, timings,
the threshold's calibration on planted copies), and a gallery PNG of pairs to look at.

Usage: .venv/bin/python bench/duplicates.py [--cache /tmp/bench-duplicates] [--input-size 96]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf import fileio  # noqa: E402
from imgclf.data import duplicates  # noqa: E402

# ../shared beside the checkout (a worktree may sit one level deeper)
SHARED = next((folder / "shared" for folder in ROOT.parents if (folder / "shared" / "data").is_dir()), ROOT / "shared")
ARCHIVE = SHARED / "data" / "cifar10-jpg.tar.gz"
BACKBONE = SHARED / "models" / "efficientnet_lite0_imagenet_notop.keras"
RESULTS = ROOT / "bench" / "results"
PLANTED = 500  # test images copied with each planted edit to calibrate the threshold


def read_archive(path: Path) -> tuple[list[str], np.ndarray]:
    """Every image's path inside the archive (sorted) and its decoded 32x32 RGB pixels."""
    found = {}
    # In stream order: a gzip stream seeks backwards only by decompressing again from the start.
    with tarfile.open(path, "r|gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".jpg"):
                with Image.open(io.BytesIO(archive.extractfile(member).read())) as image:
                    found[member.name] = np.asarray(image.convert("RGB"), dtype=np.uint8)
    names = sorted(found)
    pixels = [found[name] for name in names]
    return names, np.stack(pixels)


def make_extractor(input_size: int):
    from imgclf.config import TransferConfig
    from imgclf.training import models

    backbone, preprocessing = models.load_backbone(TransferConfig(backbone=str(BACKBONE), input_size=input_size))
    backbone.trainable = False
    return models.build_feature_extractor(backbone, preprocessing, input_shape=(32, 32, 3), input_size=input_size)


def extract(extractor, pixels: np.ndarray, *, batch_size: int = 250) -> np.ndarray:
    batches = [np.asarray(extractor.predict_on_batch(pixels[start:start + batch_size].astype(np.float32)))
               for start in range(0, len(pixels), batch_size)]
    return np.concatenate(batches).astype(np.float32)


def features(cache: Path, names: list[str], pixels: np.ndarray, input_size: int) -> tuple[np.ndarray, float]:
    path = cache / f"features-{input_size}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return saved["features"], float(saved["seconds"])
    started = time.perf_counter()
    result = extract(make_extractor(input_size), pixels)
    seconds = time.perf_counter() - started
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=result, seconds=seconds, names=np.asarray(names))
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench-duplicates"))
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--features-only", action="store_true", help="stop after caching the features")
    arguments = parser.parse_args()
    if not ARCHIVE.is_file() or not BACKBONE.is_file():
        sys.exit("skipped: the shared CIFAR-10 archive or Lite0 backbone is absent")
    started = time.perf_counter()
    names, pixels = read_archive(ARCHIVE)
    decode_seconds = time.perf_counter() - started
    feats, feature_seconds = features(arguments.cache, names, pixels, arguments.input_size)
    print(f"{len(names)} images decoded in {decode_seconds:.1f} s, features in {feature_seconds:.1f} s", flush=True)
    if arguments.features_only:
        return
    report(arguments, names, pixels, feats, decode_seconds=decode_seconds, feature_seconds=feature_seconds)


def report(arguments, names, pixels, feats, *, decode_seconds: float, feature_seconds: float) -> None:
    raise NotImplementedError


if __name__ == "__main__":
    main()
