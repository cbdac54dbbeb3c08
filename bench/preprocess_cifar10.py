"""Benchmark: download + preprocess stages on the shared CIFAR-10 JPEG archive (60,000 images).

Runs the real stages (`dvc repro`) in a scratch copy of the project and reports wall time and images/s in
bench/results/preprocess-cifar10.json, with its provenance.
Usage: python -m bench.preprocess_cifar10 [--dir /tmp/bench-preprocess]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import common, provenance
from bench.common import ARCHIVE, ARCHIVE_SHA256, ROOT
from imgclf import smoke_copy


def main() -> None:
    run = provenance.start()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-preprocess"))
    arguments = parser.parse_args()
    if not ARCHIVE.is_file():
        sys.exit(f"skipped: {ARCHIVE} is absent (this benchmark needs the shared CIFAR-10 archive)")
    overrides = {"data": {"source": "image_folder", "path": str(ARCHIVE), "sha256": ARCHIVE_SHA256}}
    root = smoke_copy.create(arguments.dir, source_root=ROOT, overrides=overrides)
    smoke_copy.dvc(root, "repro", "fingerprint_data")  # what download needs first: the checked params, the digest
    timings = {}
    for stage in ("download", "preprocess"):
        started = time.perf_counter()
        smoke_copy.dvc(root, "repro", "--single-item", stage)
        timings[stage] = time.perf_counter() - started
    meta = json.loads((root / "data" / "prepared" / "meta.json").read_text())
    images = sum(meta["counts"].values())
    common.save("preprocess-cifar10", {"images": images, "counts": meta["counts"], "skipped": meta["skipped"],
                                       "download_seconds": round(timings["download"], 1),
                                       "preprocess_seconds": round(timings["preprocess"], 1),
                                       "preprocess_images_per_second": round(images / timings["preprocess"], 1)},
                run)


if __name__ == "__main__":
    main()
