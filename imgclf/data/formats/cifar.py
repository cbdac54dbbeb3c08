"""CIFAR-10/100 in the official *binary* format: fetch and check the archive, parse its record batches.

The pickled "python version" is never read: unpickling a download can run arbitrary code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imgclf.data import archives, download
from imgclf.data.formats import raw
from imgclf.errors import DataSourceError

_CIFAR_SIDE = 32
_CIFAR_PIXEL_BYTES = _CIFAR_SIDE * _CIFAR_SIDE * 3


@dataclasses.dataclass(frozen=True)
class CifarSpec:
    """Where an official CIFAR binary archive lives and how its records are laid out."""

    url: str
    sha256: str | None
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    names_file: str
    label_bytes: int  # label bytes at the start of each record
    label_index: int  # which of them is the label used




# The digests below were checked against several independent pins (TensorFlow Datasets' checksum files,
# the dataset authors' pages, other loaders); `data.sha256` overrides them.
CIFAR_SOURCES: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        train_files=tuple(f"data_batch_{number}.bin" for number in range(1, 6)),
        test_files=("test_batch.bin",),
        names_file="batches.meta.txt",
        label_bytes=1,
        label_index=0,
    ),
    "cifar100": CifarSpec(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        sha256="58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
        train_files=("train.bin",),
        test_files=("test.bin",),
        names_file="fine_label_names.txt",
        label_bytes=2,  # coarse label, then fine label
        label_index=1,
    ),
}


def fetch(source: str, path: str | None, expected: str | None, staging: Path, download_dir: Path,
          limits: archives.ExtractionLimits) -> dict:
    """Extract the archive (data.path, or the official one downloaded) into staging; return source.json's keys."""
    spec = CIFAR_SOURCES[source]
    if path is not None:
        archive = download.existing_file(path, what=f"a local copy of {download.url_file_name(spec.url)}")
        digest = download.verify_local(archive, expected, official=spec.sha256)
        return _read_cifar_archive(spec, archive, digest, path, staging, limits)
    with download.verified_download(spec.url, download_dir / download.url_file_name(spec.url),
                                    sha256=expected or spec.sha256,
                                    max_bytes=limits.max_archive_bytes()) as (archive, digest):
        return _read_cifar_archive(spec, archive, digest, spec.url, staging, limits)


def _read_cifar_archive(spec: CifarSpec, archive: Path, digest: str, origin: str, staging: Path,
                        limits: archives.ExtractionLimits) -> dict:
    archives.safe_extract(archive, staging, limits)
    folder = _find_cifar_folder(staging, spec, archive)
    record_bytes = spec.label_bytes + _CIFAR_PIXEL_BYTES
    files: dict[str, list[str]] = {}
    num_examples: dict[str, int] = {}
    for split, names in zip(raw.SPLITS, (spec.train_files, spec.test_files), strict=True):
        files[split] = [(folder / name).relative_to(staging).as_posix() for name in names]
        num_examples[split] = sum(_cifar_record_count(folder / name, record_bytes) for name in names)
    class_names = _read_names(folder / spec.names_file)
    return raw.source_info(format_name="cifar_binary", class_names=class_names, channels=3, sha256=digest,
                           origin=origin, has_test_split=True, num_examples=num_examples, files=files,
                           label_bytes=spec.label_bytes, label_index=spec.label_index)


def _find_cifar_folder(root: Path, spec: CifarSpec, archive: Path) -> Path:
    """The extracted folder holding the binary batches, wherever the archive put it."""
    for folder, _, names in sorted(os.walk(root)):
        if spec.train_files[0] in names:
            missing = [name for name in (*spec.train_files, *spec.test_files, spec.names_file)
                       if name not in names]
            if missing:
                raise DataSourceError(f"{archive} lacks {', '.join(missing)}; it is incomplete: download "
                                      f"{spec.url} again")
            return Path(folder)
        pickled = Path(spec.train_files[0]).stem
        if pickled in names:
            raise DataSourceError(f"{archive} is the pickled 'python version' of the data set, which is "
                                  f"never unpickled here; use the binary version: {spec.url}")
    raise DataSourceError(f"{archive} holds no {spec.train_files[0]}: it is not the CIFAR binary archive "
                          f"({spec.url}); point data.path at that file or set it to null to download it")


def _cifar_record_count(path: Path, record_bytes: int) -> int:
    size = path.stat().st_size
    if size == 0 or size % record_bytes:
        raise DataSourceError(f"{path.name} has {size} bytes, not a whole number of {record_bytes}-byte "
                              "records: the file is truncated or corrupt; delete the archive and download "
                              "it again")
    return size // record_bytes


def _read_names(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataSourceError(f"{path.name} holds no class names: the archive is corrupt; download it again")
    return names


def read_cifar_binary(path: Path, *, label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse a CIFAR binary batch: (labels int64 [N], read-only pixels uint8 [N, 32, 32, 3])."""
    record_bytes = label_bytes + _CIFAR_PIXEL_BYTES
    _cifar_record_count(Path(path), record_bytes)
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, record_bytes)
    labels = records[:, label_index].astype(np.int64)
    # Each record stores the red plane, then green, then blue, each row-major: CHW to HWC.
    planes = records[:, label_bytes:].reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)
    pixels = np.ascontiguousarray(planes.transpose(0, 2, 3, 1))
    pixels.flags.writeable = False
    return labels, pixels


def iter_examples(raw_dir: Path, info: dict, class_names: list[str]) -> Iterator[raw.RawExample]:
    """Every record, train batches then test, in file and record order."""
    for split in raw.SPLITS:
        for relative in info["files"][split]:
            labels, pixels = read_cifar_binary(raw_dir / relative, label_bytes=int(info["label_bytes"]),
                                               label_index=int(info["label_index"]))
            raw.check_labels(labels, len(class_names), relative)
            for index, label in enumerate(labels.tolist()):
                yield raw.RawExample(split=split, label=label, original=f"{relative}#{index}",
                                     pixels=pixels[index])

