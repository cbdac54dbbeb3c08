"""Fetch a data source into a raw directory (the `download` stage), and read its examples back.

`fetch_source` leaves `raw_dir/source.json` beside the files it names. Paths in it are relative to raw_dir,
so the directory can move. Common keys: `source`, `format`, `class_names`, `channels`, `sha256`, `origin`,
`has_test_split`, `num_examples` ({"train": n, "test": n}); each format adds what its reader needs:

- `cifar10` / `cifar100` -> format `cifar_binary`: the official *binary* archive, extracted as it is
  (`files`, `label_bytes`, `label_index`). The pickled "python version" is never read: unpickling a
  download can run arbitrary code.
- `mnist` / `fashion_mnist` -> format `idx`: the four official IDX files, kept gzipped (`files`,
  `files_sha256`).
- `image_folder` -> format `image_folder`: a directory, a .tar/.tar.gz/.tgz/.zip archive or an http(s) URL
  of one, normalised to `images/train/<class>/...` and `images/test/<class>/...` (`train_dir`, `test_dir`);
  only image files are kept.
- `synthetic` -> format `image_folder`: small striped RGB images, generated from the seed.

Checksums: a download is always verified before it is used, against `data.sha256` or else the digest
pinned below. A local file is verified when `data.sha256` is given; otherwise it is compared with the
pinned digest and a difference is only logged, so a re-packed local copy still works. The IDX sources are
four files: their `sha256` is the digest of a `sha256sum`-style manifest of the four (`idx_manifest_sha256`),
and that is the value `data.sha256` must hold to pin them.
"""

from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import errno
import gzip
import hashlib
import http.client
import logging
import math
import os
import re
import secrets
import shutil
import ssl
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import tqdm
from PIL import Image

from imgclf import artifacts, fileio
from imgclf.errors import DataSourceError, UnsafeArchiveError

log = logging.getLogger(__name__)

SOURCES = ("cifar10", "cifar100", "mnist", "fashion_mnist", "image_folder", "synthetic")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Folders that archivers add and that are never classes (macOS zip resource forks).
_IGNORED_NAMES = frozenset({"__MACOSX"})
_SPLITS = ("train", "test")
_DOWNLOAD_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60
_CIFAR_SIDE = 32
_CIFAR_PIXEL_BYTES = _CIFAR_SIDE * _CIFAR_SIDE * 3
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_SPECIAL_FILE_TYPES = frozenset({stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK})


@dataclasses.dataclass(frozen=True)
class ExtractionLimits:
    """How much an archive may write: a decompression bomb stops with an error, not a full disk.

    Checked member by member while extracting; `max_expansion_ratio` compares what is written with the
    archive's size and only applies past the first `_RATIO_FREE_BYTES` (tiny archives compress well too).
    """

    max_extracted_mb: float = 20480.0  # data.max_extracted_mb
    max_expansion_ratio: float = 100.0  # data.max_expansion_ratio


_RATIO_FREE_BYTES = 16 << 20


class _ExtractionBudget:
    """Counts the bytes an extraction writes and refuses the member that would go over a limit."""

    def __init__(self, archive: Path, limits: ExtractionLimits):
        self.archive, self.limits = archive, limits
        self.archive_bytes = max(1, archive.stat().st_size)
        self.written = 0

    def add(self, count: int, member: str) -> None:
        self.written += count
        limit_bytes = self.limits.max_extracted_mb * (1 << 20)
        if self.written > limit_bytes:
            raise DataSourceError(
                f"{self.archive}: extracting {member!r} takes the archive past data.max_extracted_mb="
                f"{self.limits.max_extracted_mb:g} MB; raise data.max_extracted_mb if the data set really is "
                "that big, or check the archive (it may be a decompression bomb)")
        ratio = self.written / self.archive_bytes
        if self.written > _RATIO_FREE_BYTES and ratio > self.limits.max_expansion_ratio:
            raise DataSourceError(
                f"{self.archive}: extracting {member!r} expands the archive {ratio:.0f}-fold, past "
                f"data.max_expansion_ratio={self.limits.max_expansion_ratio:g}; this looks like a decompression "
                "bomb: check where the archive came from, or raise data.max_expansion_ratio")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing pixel arrays field by field is ambiguous
class RawExample:
    """One example of a raw source: array pixels (CIFAR, MNIST) or an image file decoded later."""

    split: str  # "train", or "test" for the source's official test split
    label: int  # index into class_names
    original: str  # where it came from, relative to raw_dir: "images/train/cat/1.jpg", "x.bin#12"
    pixels: np.ndarray | None = None  # uint8 HxWxC, read-only
    path: Path | None = None  # absolute path of an image file


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


@dataclasses.dataclass(frozen=True)
class IdxSpec:
    """Where the four official IDX files of an MNIST-like source live, and their class names."""

    base_url: str
    sha256: Mapping[str, str | None]
    class_names: tuple[str, ...]


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


# --------------------------------------------------------------------------------------------- fetching

def fetch_source(*, source: str, path: str | None, sha256: str | None, raw_dir: Path, download_dir: Path,
                 seed: int, synthetic_classes: int = 4, synthetic_per_class: int = 60,
                 synthetic_image_size: int = 32, limits: ExtractionLimits = ExtractionLimits()) -> dict:
    """Materialise `source` into raw_dir (replacing what is there) and write raw_dir/source.json; return it.

    Everything is built in a temporary sibling of raw_dir and swapped in at the end, so a failure leaves
    the previous raw_dir as it was. Downloads are kept in download_dir and reused when their checksum holds.
    """
    if source not in SOURCES:
        raise DataSourceError(f"unknown data.source {source!r}; use one of: {', '.join(SOURCES)}")
    expected = normalise_sha256(sha256)
    path = None if path is None else str(path)
    raw_dir, download_dir = Path(raw_dir), Path(download_dir)
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = fileio.staging_dir(raw_dir)
    try:
        if source in CIFAR_SOURCES:
            info = _fetch_cifar(source, path, expected, staging, download_dir, limits)
        elif source in IDX_SOURCES:
            info = _fetch_idx(source, path, expected, staging, download_dir)
        elif source == "image_folder":
            info = _fetch_image_folder(path, expected, staging, download_dir, limits)
        else:
            if path is not None or expected is not None:
                log.warning("data.path and data.sha256 are ignored by the synthetic source")
            info = _write_synthetic(staging, seed=seed, num_classes=synthetic_classes,
                                    per_class=synthetic_per_class, image_size=synthetic_image_size)
        info = {"source": source, **info}
        fileio.atomic_write_json(staging / artifacts.SOURCE_FILE, info)
        fileio.replace_directory(staging, raw_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("%s: %d classes, %d train / %d test examples in %s", source, len(info["class_names"]),
             info["num_examples"]["train"], info["num_examples"]["test"], raw_dir)
    return info


def normalise_sha256(value: str | None) -> str | None:
    """Lower-case a sha256 hex digest, or refuse a value that is not one."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise DataSourceError(f"data.sha256 {value!r} is not a sha256 digest (64 hex characters); "
                              "correct it, or set it to null")
    return text


def idx_manifest_sha256(digests: Mapping[str, str]) -> str:
    """The single digest of the IDX files: sha256 of their `sha256sum` lines, in the official file order."""
    manifest = "".join(f"{digests[name]}  {name}\n" for name in _IDX_NAMES)
    return hashlib.sha256(manifest.encode("ascii")).hexdigest()


def _info(*, format_name: str, class_names: list[str], channels: int, sha256: str | None, origin: str,
          has_test_split: bool, num_examples: dict[str, int], **internal: Any) -> dict:
    """source.json's common keys in a fixed order, then the reader's own."""
    return {"format": format_name, "class_names": list(class_names), "channels": channels, "sha256": sha256,
            "origin": origin, "has_test_split": has_test_split, "num_examples": num_examples, **internal}


def _fetch_cifar(source: str, path: str | None, expected: str | None, staging: Path,
                 download_dir: Path, limits: ExtractionLimits) -> dict:
    spec = CIFAR_SOURCES[source]
    if path is not None:
        archive = _existing_file(path, what=f"a local copy of {_url_file_name(spec.url)}")
        digest = _verify_local(archive, expected, official=spec.sha256)
        return _read_cifar_archive(spec, archive, digest, path, staging, limits)
    with _verified_download(spec.url, download_dir / _url_file_name(spec.url),
                            sha256=expected or spec.sha256) as (archive, digest):
        return _read_cifar_archive(spec, archive, digest, spec.url, staging, limits)


def _read_cifar_archive(spec: CifarSpec, archive: Path, digest: str, origin: str, staging: Path,
                        limits: ExtractionLimits) -> dict:
    safe_extract(archive, staging, limits)
    folder = _find_cifar_folder(staging, spec, archive)
    record_bytes = spec.label_bytes + _CIFAR_PIXEL_BYTES
    files: dict[str, list[str]] = {}
    num_examples: dict[str, int] = {}
    for split, names in zip(_SPLITS, (spec.train_files, spec.test_files), strict=True):
        files[split] = [(folder / name).relative_to(staging).as_posix() for name in names]
        num_examples[split] = sum(_cifar_record_count(folder / name, record_bytes) for name in names)
    class_names = _read_names(folder / spec.names_file)
    return _info(format_name="cifar_binary", class_names=class_names, channels=3, sha256=digest,
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


def _fetch_idx(source: str, path: str | None, expected: str | None, staging: Path,
               download_dir: Path) -> dict:
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
            files[name], digests[name] = _download(spec.base_url + name, download_dir / source / name,
                                                   sha256=pinned)
        info = _read_idx_files(source, files, digests, expected, spec.base_url, staging)
    except DataSourceError:
        for file in files.values():  # which of the four is bad is not known: none is reused
            _discard_download(file)
        raise
    for name, file in files.items():
        _mark_verified(file, digests[name])
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
    return _info(format_name="idx", class_names=list(spec.class_names), channels=1, sha256=manifest,
                 origin=origin, has_test_split=True, num_examples=num_examples,
                 files={split: {"images": images, "labels": labels}
                        for split, (images, labels) in IDX_FILES.items()},
                 files_sha256=digests)


def _check_idx_pair(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str,
                    num_classes: int) -> None:
    if len(images) != len(labels):
        raise DataSourceError(f"{images_name} holds {len(images)} images but {labels_name} holds "
                              f"{len(labels)} labels; the files do not belong together: fetch both again")
    _check_labels(labels, num_classes, labels_name)


def _fetch_image_folder(path: str | None, expected: str | None, staging: Path, download_dir: Path,
                       limits: ExtractionLimits) -> dict:
    if not path:
        raise DataSourceError("data.source image_folder needs data.path: a directory of class folders, a "
                              ".tar.gz/.tgz/.tar/.zip archive of one, or an http(s) URL of such an archive")
    extracted = staging / ".extracted"
    if _is_url(path):
        with _verified_download(path, download_dir / _url_cache_name(path), sha256=expected) as (archive, digest):
            safe_extract(archive, extracted, limits)
            return _read_image_folder(path, extracted, digest, staging, move=True)
    else:
        local = Path(path).expanduser()
        if local.is_dir():
            if expected is not None:
                raise DataSourceError(f"data.sha256 is set but data.path {path!r} is a directory, which has "
                                      "no single checksum; set data.sha256 to null or point data.path at an "
                                      "archive")
            root, digest, move = local, None, False
        elif local.is_file():
            digest = _verify_local(local, expected, official=None)
            safe_extract(local, extracted, limits)
            root, move = extracted, True
        else:
            raise DataSourceError(f"data.path {path!r} does not exist; give a directory of class folders, an "
                                  "archive of one, or an http(s) URL")
    return _read_image_folder(path, root, digest, staging, move=move)


def _read_image_folder(path: str, root: Path, digest: str | None, staging: Path, *, move: bool) -> dict:
    """Normalise the class folders under `root` (extracted, or the user's own folder) into staging/images."""
    extracted = staging / ".extracted"
    boundary = os.path.realpath(root)  # no link may lead the copy out of this folder
    root = find_dataset_root(root)
    train_dir, test_dir = (root / "train", root / "test") if (root / "train").is_dir() else (root, None)
    if test_dir is not None and not test_dir.is_dir():
        test_dir = None
    if train_dir != root:
        ignored = [name for name in _class_dirs(root) if name not in _SPLITS]
        if ignored:  # a val/ folder, say: worth a word, since it silently holds no examples
            log.warning("%s: only train/ and test/ are read; ignoring %s", path, ", ".join(ignored))
    class_names = _class_dirs(train_dir)
    if not class_names:
        raise DataSourceError(
            f"{path}: found no class folders. Expected <root>/<class>/<images>, or <root>/train/<class>/"
            "<images> with an optional <root>/test/<class>/<images> (one folder wrapping it all is fine)")
    test_classes = _class_dirs(test_dir) if test_dir is not None else []
    unknown = sorted(set(test_classes) - set(class_names))
    if unknown:
        raise DataSourceError(f"{path}: test/ has classes that train/ lacks: {', '.join(unknown)}; add "
                              "training images for them or remove them from test/")
    if test_dir is not None and not test_classes:
        raise DataSourceError(f"{path}: test/ holds no class folders; fill it as test/<class>/<images> or "
                              "remove it")
    copies = {"train": _plan_copies(train_dir, staging / "images" / "train", class_names),
              "test": _plan_copies(test_dir, staging / "images" / "test", test_classes) if test_dir else []}
    outside = sorted(str(copy.source) for split in _SPLITS for copy in copies[split]
                     if not _inside(copy.real, boundary))
    if outside:
        # A link to /etc/passwd named x.png would otherwise land in data/raw, the DVC cache and its remote.
        log.warning("%s: skipped %d link(s) to files outside the folder: %s", path, len(outside),
                    ", ".join(outside[:10]) + (" ..." if len(outside) > 10 else ""))
        copies = {split: [copy for copy in copies[split] if _inside(copy.real, boundary)] for split in _SPLITS}
    if not copies["train"]:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DataSourceError(f"{path}: the class folders hold no image files ({extensions}); "
                              "check data.path")
    for split, names in (("train", class_names), ("test", test_classes)):
        for name in names:  # every class keeps its folder, even one left empty: the reader expects it
            (staging / "images" / split / name).mkdir(parents=True, exist_ok=True)
    _carry_out(copies["train"] + copies["test"], move=move)
    shutil.rmtree(extracted, ignore_errors=True)
    return _info(format_name="image_folder", class_names=class_names, channels=3, sha256=digest, origin=path,
                 has_test_split=test_dir is not None,
                 num_examples={split: len(copies[split]) for split in _SPLITS}, train_dir="images/train",
                 test_dir="images/test" if test_dir is not None else None, skipped_links=outside)


def find_dataset_root(root: Path) -> Path:
    """Descend through single wrapping folders (archives often hold one) until the data set's own root."""
    current = Path(root)
    while not (current / "train").is_dir():
        entries = _visible_entries(current)
        if len(entries) != 1 or not entries[0].is_dir():
            break
        # A lone folder whose entries are all files is a single class, not a wrapper.
        if not any(entry.is_dir() for entry in _visible_entries(entries[0])):
            break
        current = entries[0]
    return current


def _visible_entries(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not _is_hidden(entry.name))


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_NAMES


def _class_dirs(folder: Path) -> list[str]:
    return sorted(entry.name for entry in _visible_entries(folder) if entry.is_dir())


def image_files(folder: Path) -> list[str]:
    """Image files under `folder`, recursively, as sorted relative POSIX paths; hidden entries skipped."""
    found = []
    for current, dirs, names in os.walk(folder):
        dirs[:] = [name for name in dirs if not _is_hidden(name)]
        relative = Path(current).relative_to(folder)
        found += [(relative / name).as_posix() for name in names
                  if not _is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class _Copy:
    source: Path  # the image file as listed
    target: Path
    real: str  # where it really is, every link resolved
    linked: bool  # reached through a link (the file, its class folder or one in between)


def _plan_copies(split_dir: Path, destination: Path, class_names: list[str]) -> list[_Copy]:
    """Every image file of each class folder, and where it goes (destination/<class>/<relative path>)."""
    split_real = os.path.realpath(split_dir)
    plan = []
    for name in class_names:
        for relative in image_files(split_dir / name):
            file = split_dir / name / relative
            real = os.path.realpath(file)
            plan.append(_Copy(source=file, target=destination / name / relative, real=real,
                              linked=real != os.path.join(split_real, name, relative)))
    return plan


def _carry_out(copies: list[_Copy], *, move: bool) -> None:
    """Copy the planned files, or move those of our own extraction that no link reaches through.

    Linked files are copied first, across all classes and both splits: a link to another member must
    still find it, whatever the order of the names (moving its target first would break it).
    """
    for copy in sorted(copies, key=lambda copy: not copy.linked):
        copy.target.parent.mkdir(parents=True, exist_ok=True)
        if move and not copy.linked:
            os.replace(copy.source, copy.target)
        else:
            shutil.copyfile(copy.source, copy.target)


def _existing_file(path: str, *, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataSourceError(f"data.path {path!r} is not a file; it must be {what}, or null to download it")
    return file


def _verify_local(file: Path, expected: str | None, *, official: str | None) -> str:
    """Check a local file against data.sha256 (an error) or the official digest (a warning); return its."""
    digest = fileio.sha256_file(file)
    if expected is not None and digest != expected:
        raise DataSourceError(f"{file}: sha256 is {digest} but data.sha256 expects {expected}; check that "
                              "data.path names the right file, or correct data.sha256")
    if expected is None and official is not None and digest != official:
        log.warning("%s differs from the official archive (sha256 %s, official %s); using it anyway because "
                    "data.sha256 is not set", file, digest, official)
    return digest


# -------------------------------------------------------------------------------------------- downloads

def download(url: str, destination: Path, *, sha256: str | None) -> Path:
    """Download `url` to `destination`, verified against `sha256` before it is renamed into place.

    A complete file already at `destination` is reused when its checksum matches, or, with no checksum
    given, when it was marked verified after an earlier use; otherwise it is downloaded again. The
    transfer goes to `<destination>.part`, never mistaken for a complete file.
    """
    return _download(url, Path(destination), sha256=normalise_sha256(sha256))[0]


@contextlib.contextmanager
def _verified_download(url: str, destination: Path, *, sha256: str | None) -> Iterator[tuple[Path, str]]:
    """Download (or reuse) `url`; the body reads it. A file the body finds bad is deleted, a good one marked.

    Without a pinned digest only reading the file proves it good (an HTML error page or a truncated body
    has no Content-Length to betray it), so the mark, not the file's presence, decides reuse.
    """
    file, digest = _download(url, destination, sha256=sha256)
    try:
        yield file, digest
    except DataSourceError:
        _discard_download(file)
        raise
    _mark_verified(file, digest)


def _verified_mark(file: Path) -> Path:
    return file.with_name(file.name + ".verified")


def _mark_verified(file: Path, digest: str) -> None:
    fileio.atomic_write_text(_verified_mark(file), digest + "\n")


def _discard_download(file: Path) -> None:
    log.warning("removing %s: it failed verification, so the next run downloads it again", file)
    file.unlink(missing_ok=True)
    _verified_mark(file).unlink(missing_ok=True)


def _download(url: str, destination: Path, *, sha256: str | None) -> tuple[Path, str]:
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise DataSourceError(f"cannot download {url!r}: only http:// and https:// URLs are supported")
    if destination.is_file():
        digest = fileio.sha256_file(destination)
        mark = _verified_mark(destination)
        verified = mark.is_file() and mark.read_text().strip() == digest
        if digest == sha256 or (sha256 is None and verified):
            log.info("using %s, downloaded earlier", destination)
            return destination, digest
        log.warning("%s (sha256 %s) %s; downloading it again", destination, digest,
                    f"is not the expected {sha256}" if sha256 else "was never verified")
        _verified_mark(destination).unlink(missing_ok=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        digest = _stream(url, partial)
        if sha256 is not None and digest != sha256:
            raise DataSourceError(f"{url} downloaded with sha256 {digest}, but {sha256} was expected; check "
                                  "data.sha256 and the URL (the file may have changed upstream)")
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return destination, digest


def _stream(url: str, partial: Path) -> str:
    """Write the body at `url` to `partial` with a progress bar; return its sha256."""
    hasher = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "imgclf-download/1"})
    written, total = 0, None
    try:
        with (urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response,
              open(partial, "wb") as handle):
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            log.info("downloading %s (%s bytes) to %s", url, total if total is not None else "unknown",
                     partial.parent)
            # disable=None: no bar when stderr is not a terminal (CI logs); the log line above remains.
            with tqdm.tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=None,
                           desc=partial.name.removesuffix(".part")) as bar:
                while chunk := response.read(_DOWNLOAD_CHUNK):
                    handle.write(chunk)
                    hasher.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DataSourceError(f"downloading {url} failed: HTTP {error.code} {error.reason}; check the URL "
                              "(data.path)") from error
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
            ssl.SSLError) as error:
        reason = getattr(error, "reason", None) or error
        raise DataSourceError(f"downloading {url} failed ({reason}); check the network connection, or "
                              "download the file yourself and point data.path at it") from error
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        need = f"about {math.ceil(total / (1 << 20))} MB" if total else f"more than {written >> 20} MB"
        raise DataSourceError(f"no space left on {partial.parent}, need {need} for {url}; free some space "
                              "and run the stage again") from error
    if total is not None and written != total:
        raise DataSourceError(f"downloading {url} stopped after {written} of {total} bytes; run the stage "
                              "again")
    return hasher.hexdigest()


def _is_url(path: str) -> bool:
    return urllib.parse.urlparse(path).scheme in ("http", "https")


def _url_file_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "download"


def _url_cache_name(url: str) -> str:
    # Prefixed with a digest of the URL: two URLs ending in the same file name must not share a cache entry.
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{_url_file_name(url)}"


# ------------------------------------------------------------------------------------------- extraction

def safe_extract(archive: Path, target: Path, limits: ExtractionLimits = ExtractionLimits()) -> None:
    """Extract a .tar (optionally gz/bz2/xz-compressed) or .zip archive into `target`, refusing escapes.

    Every member is checked before anything is written: absolute paths, `..` components, device files and
    FIFOs raise `UnsafeArchiveError`; links must resolve inside the target, both by name and once created.
    Extraction happens in a temporary sibling directory renamed into place at the end, so a failure leaves
    no partial `target`. `target` must not exist or be an empty directory. `limits` bound what is written.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataSourceError(f"cannot extract {archive} into {target}: it exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = fileio.staging_dir(target)
    try:
        if not archive.is_file():
            raise DataSourceError(f"{archive} is not a file")
        budget = _ExtractionBudget(archive, limits)
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, staging, budget)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, staging, budget)
        else:
            raise DataSourceError(f"{archive} is not a .tar, .tar.gz/.tgz or .zip archive, or it is corrupt; "
                                  "check data.path")
        fileio.replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_member_name(archive: Path, name: str) -> None:
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise _unsafe(archive, name, "has an absolute path")
    if ".." in re.split(r"[\\/]", name):
        raise _unsafe(archive, name, "contains '..'")


def _unsafe(archive: Path, member: str, problem: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{archive}: member {member!r} {problem}; refusing to extract this archive "
                              "(check where it came from, or extract it yourself and use the folder)")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _extract_tar(archive: Path, staging: Path, budget: _ExtractionBudget) -> None:
    root = os.path.realpath(staging)
    try:
        with tarfile.open(archive, "r:*") as tar:
            plain, links = [], []
            # Iterated lazily: headers are read as the stream is decompressed, so a bomb is refused at the
            # member that overflows the budget, before its data is decompressed or anything is written
            # (tarfile writes exactly `size` bytes per file).
            for member in tar:
                _check_member_name(archive, member.name)
                if member.isreg():
                    budget.add(member.size, member.name)
                if member.isreg() or member.isdir():
                    plain.append(member)
                elif member.issym() or member.islnk():
                    _check_link_name(archive, member, root)
                    links.append(member)
                else:
                    raise _unsafe(archive, member.name, "is a device file, FIFO or of an unknown type")
            # Links are made last, so no file is ever written through one; the "data" filter (Python
            # 3.11.4+) is a second line of defence on top of the checks above.
            options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=plain, **options)
            _make_links(archive, links, staging, root)
    except tarfile.FilterError as error:
        name = error.tarinfo.name if error.tarinfo is not None else "?"
        raise _unsafe(archive, name, f"was refused by tarfile's data filter ({error})") from error
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataSourceError(f"{archive} is corrupt or truncated ({error}); fetch it again") from error


def _check_link_name(archive: Path, member: tarfile.TarInfo, root: str) -> None:
    """Refuse a link whose target, read as a path, leaves the extraction directory."""
    link = member.linkname
    base = os.path.dirname(member.name) if member.issym() else ""  # hard links name a member path
    if os.path.isabs(link) or not _inside(os.path.normpath(os.path.join(root, base, link)), root):
        raise _unsafe(archive, member.name, f"links to {link!r}, outside the extraction directory")


def _make_links(archive: Path, links: list[tarfile.TarInfo], staging: Path, root: str) -> None:
    """Create the archive's links, checking where each really resolves (chains of links included)."""
    for member in links:
        destination = os.path.join(staging, member.name)
        parent = os.path.realpath(os.path.dirname(destination))
        if not _inside(parent, root) or os.path.lexists(destination):
            raise _unsafe(archive, member.name, "would be written through a link or over another member")
        os.makedirs(parent, exist_ok=True)
        if member.issym():
            os.symlink(member.linkname, os.path.join(parent, os.path.basename(destination)))
            continue
        source = os.path.realpath(os.path.join(staging, member.linkname))
        if not _inside(source, root) or not os.path.isfile(source):
            raise _unsafe(archive, member.name,
                          f"is a hard link to {member.linkname!r}, which is not a file inside the archive")
        os.link(source, os.path.join(parent, os.path.basename(destination)))
    # A later link can change where an earlier one resolves, so every symlink is checked once all exist.
    for member in links:
        if member.issym() and not _inside(os.path.realpath(os.path.join(staging, member.name)), root):
            raise _unsafe(archive, member.name,
                          f"links to {member.linkname!r}, which resolves outside the extraction directory")


def _extract_zip(archive: Path, staging: Path, budget: _ExtractionBudget) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                _check_member_name(archive, info.filename)
                # Unix type bits, when the archiver recorded them (many leave them 0).
                if stat.S_IFMT(info.external_attr >> 16) in _SPECIAL_FILE_TYPES:
                    raise _unsafe(archive, info.filename, "is a device file or FIFO")
                if info.flag_bits & 0x1:
                    raise DataSourceError(f"{archive}: member {info.filename!r} is encrypted; extract the "
                                          "archive yourself and point data.path at the folder")
            # A zip "symlink" is written as a plain file holding the target's name: nothing escapes. Sizes in
            # the directory can lie, so the bytes are counted as they are decompressed.
            for info in bundle.infolist():
                target = staging.joinpath(*[part for part in re.split(r"[\\/]", info.filename) if part])
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as member, open(target, "wb") as handle:
                    while chunk := member.read(_DOWNLOAD_CHUNK):
                        budget.add(len(chunk), info.filename)
                        handle.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotADirectoryError, IsADirectoryError) as error:
        raise DataSourceError(f"{archive} is corrupt or truncated ({error}); fetch it again") from error


# -------------------------------------------------------------------------------------------- synthetic

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


def _write_synthetic(staging: Path, *, seed: int, num_classes: int, per_class: int, image_size: int) -> dict:
    if num_classes < 2 or per_class < 1 or image_size < 8:
        raise DataSourceError("the synthetic source needs data.synthetic_classes >= 2, "
                              "data.synthetic_per_class >= 1 and data.synthetic_image_size >= 8")
    rng = np.random.default_rng(seed)
    class_names = synthetic_class_names(num_classes)
    counts = {"train": per_class, "test": max(1, per_class // 4)}
    manifest = hashlib.sha256()
    for split in _SPLITS:
        for label, name in enumerate(class_names):
            folder = staging / "images" / split / name
            folder.mkdir(parents=True)
            for number in range(counts[split]):
                file = folder / f"{number:04d}.png"
                Image.fromarray(synthetic_image(rng, label, num_classes, image_size)).save(file, format="PNG")
                relative = file.relative_to(staging).as_posix()
                manifest.update(f"{fileio.sha256_file(file)}  {relative}\n".encode())
    return _info(format_name="image_folder", class_names=class_names, channels=3, sha256=manifest.hexdigest(),
                 origin=f"synthetic(seed={seed})", has_test_split=True,
                 num_examples={split: counts[split] * num_classes for split in _SPLITS},
                 train_dir="images/train", test_dir="images/test")


# ------------------------------------------------------------------------------------------------ reading

def iter_examples(raw_dir: Path) -> tuple[list[str], Iterator[RawExample]]:
    """Read raw_dir/source.json; return (class_names, every example in a deterministic order).

    The order is split (train, then test), then file and record order (CIFAR, IDX) or class, then sorted
    file path (image folders). The iterator reads lazily; a damaged file raises `DataSourceError` then.
    """
    raw_dir = Path(raw_dir)
    info = fileio.read_json(raw_dir / artifacts.SOURCE_FILE)
    readers = {"cifar_binary": _iter_cifar, "idx": _iter_idx, "image_folder": _iter_image_folder}
    reader = readers.get(info.get("format"))
    if reader is None:
        raise DataSourceError(f"{raw_dir / 'source.json'} has an unknown format {info.get('format')!r}; run "
                              "the download stage again")
    class_names = list(info["class_names"])
    return class_names, reader(raw_dir, info, class_names)


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


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        raise DataSourceError(f"{where} has label {int(labels.max())} but the source has {num_classes} "
                              "classes: the files are corrupt or mismatched; fetch them again")


def _iter_cifar(raw_dir: Path, info: dict, class_names: list[str]) -> Iterator[RawExample]:
    for split in _SPLITS:
        for relative in info["files"][split]:
            labels, pixels = read_cifar_binary(raw_dir / relative, label_bytes=int(info["label_bytes"]),
                                               label_index=int(info["label_index"]))
            _check_labels(labels, len(class_names), relative)
            for index, label in enumerate(labels.tolist()):
                yield RawExample(split=split, label=label, original=f"{relative}#{index}",
                                 pixels=pixels[index])


def _iter_idx(raw_dir: Path, info: dict, class_names: list[str]) -> Iterator[RawExample]:
    for split in _SPLITS:
        names = info["files"][split]
        images = read_idx(raw_dir / names["images"], magic=_IDX_IMAGES_MAGIC)[..., np.newaxis]
        labels = read_idx(raw_dir / names["labels"], magic=_IDX_LABELS_MAGIC)
        _check_idx_pair(images, labels, names["images"], names["labels"], len(class_names))
        for index, label in enumerate(labels.tolist()):
            yield RawExample(split=split, label=label, original=f"{names['images']}#{index}",
                             pixels=images[index])


def _iter_image_folder(raw_dir: Path, info: dict, class_names: list[str]) -> Iterator[RawExample]:
    base = raw_dir.absolute()
    for split, key in (("train", "train_dir"), ("test", "test_dir")):
        if info.get(key) is None:
            continue
        for label, name in enumerate(class_names):
            folder = base / info[key] / name
            if not folder.is_dir():
                if split == "test":
                    continue  # a class may have no official test images
                raise DataSourceError(f"{folder} is missing; run the download stage again")
            for relative in image_files(folder):
                original = f"{info[key]}/{name}/{relative}"
                yield RawExample(split=split, label=label, original=original, path=base / original)
