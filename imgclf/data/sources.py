"""Fetch a data source into a raw directory (the `download` stage), and read its examples back.

`fetch_source` leaves `raw_dir/source.json` beside the files it names. Paths in it are relative to raw_dir,
so the directory can move. Common keys: `source`, `format`, `class_names`, `channels`, `sha256`, `origin`,
`has_test_split`, `num_examples` ({"train": n, "test": n}); each format adds what its reader needs:

- `cifar10` / `cifar100` -> format `cifar_binary` (formats/cifar.py): the official *binary* archive,
  extracted as it is (`files`, `label_bytes`, `label_index`).
- `mnist` / `fashion_mnist` -> format `idx` (formats/idx.py): the four official IDX files, kept gzipped
  (`files`, `files_sha256`).
- `image_folder` -> format `image_folder` (formats/image_folder.py): a directory, an archive or an http(s)
  URL of one, normalised to `images/train/<class>/...` and `images/test/<class>/...` (`train_dir`, `test_dir`);
  what it left out, and why: `skipped_links` (links out of the folder), `skipped_files` (formats not decoded here,
  FIFOs and devices; preprocess lists them in skipped.csv).
- `synthetic` -> format `image_folder` (formats/synthetic.py): small striped RGB images, generated from the seed.

Checksums (download.py): a download is always verified before it is used, against `data.sha256` or else the
digest pinned in the format's module. A local file is verified when `data.sha256` is given; otherwise it is
compared with the pinned digest and a difference is only logged, so a re-packed local copy still works.
Archives are extracted by archives.py, which refuses escapes and bounds what is written.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Iterator
from pathlib import Path

from imgclf import artifacts, fileio
from imgclf.config import DataSource
from imgclf.data import archives, download
from imgclf.data.formats import cifar, idx, image_folder, raw, synthetic
from imgclf.errors import DataSourceError

log = logging.getLogger(__name__)

SOURCES = typing.get_args(DataSource)  # the one list: imgclf.config.DataSource
_DEFAULT_LIMITS = archives.ExtractionLimits()
_READERS = {"cifar_binary": cifar.iter_examples, "idx": idx.iter_examples, "image_folder": image_folder.iter_examples}


def fetch_source(*, source: str, path: str | None, sha256: str | None, raw_dir: Path, download_dir: Path,
                 seed: int, synthetic_classes: int = 4, synthetic_per_class: int = 60,
                 synthetic_image_size: int = 32,
                 limits: archives.ExtractionLimits = _DEFAULT_LIMITS) -> dict:
    """Materialise `source` into raw_dir (replacing what is there) and write raw_dir/source.json; return it.

    Everything is built in a temporary sibling of raw_dir and swapped in at the end, so a failure leaves
    the previous raw_dir as it was. Downloads are kept in download_dir and reused when their checksum holds.
    """
    if source not in SOURCES:
        raise DataSourceError(f"unknown data.source {source!r}; use one of: {', '.join(SOURCES)}")
    expected = download.normalise_sha256(sha256)
    path = None if path is None else str(path)
    raw_dir, download_dir = Path(raw_dir), Path(download_dir)
    with fileio.staged_directory(raw_dir) as staging:
        if source in cifar.CIFAR_SOURCES:
            info = cifar.fetch(source, path, expected, staging, download_dir, limits)
        elif source in idx.IDX_SOURCES:
            info = idx.fetch(source, path, expected, staging, download_dir)
        elif source == "image_folder":
            info = image_folder.fetch(path, expected, staging, download_dir, limits)
        else:
            if path is not None or expected is not None:
                log.warning("data.path and data.sha256 are ignored by the synthetic source")
            info = synthetic.write(staging, seed=seed, num_classes=synthetic_classes,
                                   per_class=synthetic_per_class, image_size=synthetic_image_size)
        info = {"source": source, **info}
        fileio.atomic_write_json(staging / artifacts.SOURCE_FILE, info)
    log.info("%s: %d classes, %d train / %d test examples in %s", source, len(info["class_names"]),
             info["num_examples"]["train"], info["num_examples"]["test"], raw_dir)
    return info


def iter_examples(raw_dir: Path) -> tuple[list[str], Iterator[raw.RawExample]]:
    """Read raw_dir/source.json; return (class_names, every example in a deterministic order).

    The order is split (train, then test), then file and record order (CIFAR, IDX) or class, then sorted
    file path (image folders). The iterator reads lazily; a damaged file raises `DataSourceError` then.
    """
    raw_dir = Path(raw_dir)
    info = fileio.read_json(raw_dir / artifacts.SOURCE_FILE)
    reader = _READERS.get(info.get("format"))
    if reader is None:
        raise DataSourceError(f"{raw_dir / artifacts.SOURCE_FILE} has an unknown format {info.get('format')!r}; "
                              "run the download stage again")
    class_names = list(info["class_names"])
    return class_names, reader(raw_dir, info, class_names)
