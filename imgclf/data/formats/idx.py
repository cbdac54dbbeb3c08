"""MNIST-like sources: the four official gzipped IDX files, fetched and checked as one set, and their parser.

Their `sha256` in source.json is the digest of a `sha256sum`-style manifest of the four
(`idx_manifest_sha256`): that is the value `data.sha256` must hold to pin them.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import math
import shutil
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from imgclf import fileio
from imgclf.data import download
from imgclf.data.formats import raw
from imgclf.errors import DataSourceError

log = logging.getLogger(__name__)

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


@dataclasses.dataclass(frozen=True)
class IdxSpec:
    """Where the four official IDX files of an MNIST-like source live, and their class names."""

    base_url: str
    sha256: Mapping[str, str | None]
    class_names: tuple[str, ...]


IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_NAMES = (*IDX_FILES["train"], *IDX_FILES["test"])

IDX_SOURCES: dict[str, IdxSpec] = {
    "mnist": IdxSpec(
        base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        class_names=tuple(str(digit) for digit in range(10)),
    ),
    "fashion_mnist": IdxSpec(
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        # The official names, with "/" and " " replaced so each is also a safe file name.
        class_names=("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                     "Bag", "Ankle_boot"),
    ),
}


def idx_manifest_sha256(digests: Mapping[str, str]) -> str:
    """The single digest of the IDX files: sha256 of their `sha256sum` lines, in the official file order."""
    manifest = "".join(f"{digests[name]}  {name}\n" for name in _IDX_NAMES)
    return hashlib.sha256(manifest.encode("ascii")).hexdigest()


def fetch(source: str, path: str | None, expected: str | None, staging: Path, download_dir: Path) -> dict:
    """Copy the four files (from data.path, or downloaded) into staging, checked as a set; return source.json's keys."""
    spec = IDX_SOURCES[source]
    digests: dict[str, str] = {}
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise DataSourceError(f"data.path {path!r} is not a directory; for {source} it must be a "
                                  f"directory holding {', '.join(_IDX_NAMES)}")
        missing = [name for name in _IDX_NAMES if not (folder / name).is_file()]
        if missing:
            raise DataSourceError(f"{folder} lacks {', '.join(missing)}; put the four official gzipped IDX "
                                  "files there, or set data.path to null to download them")
        for name in _IDX_NAMES:
            digests[name] = fileio.sha256_file(folder / name)
            official = spec.sha256.get(name)
            if expected is None and official and digests[name] != official:
                log.warning("%s differs from the official file (sha256 %s, official %s); using it anyway "
                            "because data.sha256 is not set", folder / name, digests[name], official)
        files = {name: folder / name for name in _IDX_NAMES}
        origin = path
        return _read_idx_files(source, files, digests, expected, origin, staging)
    files = {}
    try:
        for name in _IDX_NAMES:
            # With data.sha256 set, the manifest digest below replaces the per-file pins.
            pinned = None if expected else spec.sha256.get(name)
            files[name], digests[name] = download.download_with_digest(
                spec.base_url + name, download_dir / source / name, sha256=pinned)
        info = _read_idx_files(source, files, digests, expected, spec.base_url, staging)
    except DataSourceError:
        for file in files.values():  # which of the four is bad is not known: none is reused
            download.discard_download(file)
        raise
    for name, file in files.items():
        download.mark_verified(file, digests[name])
    return info


def _read_idx_files(source: str, files: dict[str, Path], digests: dict[str, str], expected: str | None,
                    origin: str, staging: Path) -> dict:
    spec = IDX_SOURCES[source]
    manifest = idx_manifest_sha256(digests)
    if expected is not None and manifest != expected:
        raise DataSourceError(f"the {source} files' manifest sha256 is {manifest} but data.sha256 is "
                              f"{expected}; check data.sha256 and data.path (see idx_manifest_sha256)")
    num_examples = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images = read_idx(files[images_name], magic=_IDX_IMAGES_MAGIC)
        labels = read_idx(files[labels_name], magic=_IDX_LABELS_MAGIC)
        _check_idx_pair(images, labels, images_name, labels_name, len(spec.class_names))
        num_examples[split] = len(labels)
    for name, file in files.items():
        shutil.copyfile(file, staging / name)
    return raw.source_info(format_name="idx", class_names=list(spec.class_names), channels=1, sha256=manifest,
                           origin=origin, has_test_split=True, num_examples=num_examples,
                           files={split: {"images": images, "labels": labels}
                                  for split, (images, labels) in IDX_FILES.items()},
                           files_sha256=digests)


def _check_idx_pair(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str,
                    num_classes: int) -> None:
    if len(images) != len(labels):
        raise DataSourceError(f"{images_name} holds {len(images)} images but {labels_name} holds "
                              f"{len(labels)} labels; the files do not belong together: fetch both again")
    raw.check_labels(labels, num_classes, labels_name)


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped or not) whose header must carry `magic`."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataSourceError(f"{Path(path).name} is not a valid gzip file ({error}); fetch it again") \
                from error
    ndim = magic & 0xFF
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes or int.from_bytes(data[:4], "big") != magic:
        found = f"{int.from_bytes(data[:4], 'big'):#010x}" if len(data) >= 4 else "missing"
        raise DataSourceError(f"{Path(path).name}: IDX magic number {found} is not {magic:#010x}: not the "
                              "expected IDX file; check data.path")
    shape = tuple(int.from_bytes(data[4 + 4 * axis:8 + 4 * axis], "big") for axis in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=header_bytes)
    if body.size != math.prod(shape):
        raise DataSourceError(f"{Path(path).name}: header says {shape} but {body.size} data bytes follow: "
                              "the file is truncated or corrupt; fetch it again")
    return body.reshape(shape)


def iter_examples(raw_dir: Path, info: dict, class_names: list[str]) -> Iterator[raw.RawExample]:
    """Every image, train then test, in file order; single-channel pixels (HxWx1)."""
    for split in raw.SPLITS:
        names = info["files"][split]
        images = read_idx(raw_dir / names["images"], magic=_IDX_IMAGES_MAGIC)[..., np.newaxis]
        labels = read_idx(raw_dir / names["labels"], magic=_IDX_LABELS_MAGIC)
        _check_idx_pair(images, labels, names["images"], names["labels"], len(class_names))
        for index, label in enumerate(labels.tolist()):
            yield raw.RawExample(split=split, label=label, original=f"{names['images']}#{index}",
                                 pixels=images[index])

