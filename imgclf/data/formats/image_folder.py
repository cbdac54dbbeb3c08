"""Image folders: a directory, a .tar/.tar.gz/.tgz/.zip archive or an http(s) URL of one, normalised to
`images/train/<class>/...` and `images/test/<class>/...`; only image files are kept, and no link leads outside.

Names there are UTF-8: a file or class folder named in another encoding (a Windows archive's `café.png` in
Latin-1) keeps its image under its name with the undecodable bytes written as backslash escapes (`caf\\xe9.png`),
listed in the log and in source.json (`escaped_names`), so manifest.csv, meta.json and the reports can hold it."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from imgclf import fileio
from imgclf.data import archives, download
from imgclf.data.formats import raw
from imgclf.errors import DataSourceError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Image formats that are not decoded here (no decoder in this Pillow, or one not trusted with untrusted files):
# such files are listed as skipped (source.json's `skipped_files`, then skipped.csv), never silently ignored.
UNSUPPORTED_IMAGE_FORMATS = {".avif": "AVIF", ".heic": "HEIC", ".heif": "HEIF", ".jp2": "JPEG 2000",
                             ".j2k": "JPEG 2000", ".j2c": "JPEG 2000", ".jpf": "JPEG 2000", ".jpx": "JPEG 2000",
                             ".jxl": "JPEG XL", ".psd": "Photoshop", ".svg": "SVG", ".eps": "PostScript",
                             ".dng": "camera raw", ".cr2": "camera raw", ".cr3": "camera raw", ".nef": "camera raw",
                             ".arw": "camera raw", ".orf": "camera raw", ".rw2": "camera raw", ".raf": "camera raw"}
# Folders that archivers add and that are never classes (macOS zip resource forks).
_IGNORED_NAMES = frozenset({"__MACOSX"})


def fetch(path: str | None, expected: str | None, staging: Path, download_dir: Path,
          limits: archives.ExtractionLimits) -> dict:
    """Normalise data.path (folder, archive or URL of one) into staging/images; return source.json's keys."""
    if not path:
        raise DataSourceError("data.source image_folder needs data.path: a directory of class folders, a "
                              ".tar.gz/.tgz/.tar/.zip archive of one, or an http(s) URL of such an archive")
    extracted = staging / ".extracted"
    if download.is_url(path):
        cached = download_dir / download.url_cache_name(path)
        with download.verified_download(path, cached, sha256=expected,
                                        max_bytes=limits.max_archive_bytes()) as (archive, digest):
            archives.safe_extract(archive, extracted, limits)
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
            digest = download.verify_local(local, expected, official=None)
            archives.safe_extract(local, extracted, limits)
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
        ignored = [name for name in _class_dirs(root) if name not in raw.SPLITS]
        if ignored:  # a val/ folder, say: worth a word, since it silently holds no examples
            log.warning("%s: only train/ and test/ are read; ignoring %s", path, ", ".join(ignored))
    class_folders = _class_dirs(train_dir)
    class_names = sorted(escape_name(name) for name in class_folders)
    if not class_names:
        raise DataSourceError(
            f"{path}: found no class folders. Expected <root>/<class>/<images>, or <root>/train/<class>/"
            "<images> with an optional <root>/test/<class>/<images> (one folder wrapping it all is fine)")
    test_folders = _class_dirs(test_dir) if test_dir is not None else []
    test_classes = sorted(escape_name(name) for name in test_folders)
    unknown = sorted(set(test_classes) - set(class_names))
    if unknown:
        raise DataSourceError(f"{path}: test/ has classes that train/ lacks: {', '.join(unknown)}; add "
                              "training images for them or remove them from test/")
    if test_dir is not None and not test_classes:
        raise DataSourceError(f"{path}: test/ holds no class folders; fill it as test/<class>/<images> or "
                              "remove it")
    skipped: list[dict[str, str]] = []  # files that look like images but are not copied, and why
    copies = {"train": _plan_copies(train_dir, staging / "images" / "train", class_folders, root=root,
                                    skipped=skipped),
              "test": _plan_copies(test_dir, staging / "images" / "test", test_folders, root=root,
                                   skipped=skipped) if test_dir else []}
    if skipped:
        log.warning("%s: skipped %d file(s) that are no readable images here (listed in skipped.csv): %s", path,
                    len(skipped), "; ".join(f"{item['file']}: {item['reason']}" for item in skipped[:5])
                    + (" ..." if len(skipped) > 5 else ""))
    outside = sorted(escape_name(str(copy.source)) for split in raw.SPLITS for copy in copies[split]
                     if not archives.is_inside(copy.real, boundary))
    if outside:
        # A link to /etc/passwd named x.png would otherwise land in data/raw, the DVC cache and its remote.
        log.warning("%s: skipped %d link(s) to files outside the folder: %s", path, len(outside),
                    ", ".join(outside[:10]) + (" ..." if len(outside) > 10 else ""))
        copies = {split: [copy for copy in copies[split] if archives.is_inside(copy.real, boundary)]
                  for split in raw.SPLITS}
    if not copies["train"]:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        unread = f" ({len(skipped)} skipped, e.g. {skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""
        raise DataSourceError(f"{path}: the class folders hold no image files ({extensions}){unread}; "
                              "check data.path")
    for split, names in (("train", class_names), ("test", test_classes)):
        for name in names:  # every class keeps its folder, even one left empty: the reader expects it
            (staging / "images" / split / name).mkdir(parents=True, exist_ok=True)
    escaped = _check_escaped_names(path, staging, copies["train"] + copies["test"])
    _carry_out(copies["train"] + copies["test"], move=move)
    shutil.rmtree(extracted, ignore_errors=True)
    return raw.source_info(format_name="image_folder", class_names=class_names, channels=3, sha256=digest,
                           origin=path, has_test_split=test_dir is not None,
                           num_examples={split: len(copies[split]) for split in raw.SPLITS},
                           train_dir="images/train", test_dir="images/test" if test_dir is not None else None,
                           skipped_links=outside, escaped_names=escaped, skipped_files=skipped)


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


def image_files(folder: Path, *, unsupported: list[str] | None = None) -> list[str]:
    """Image files under `folder`, recursively, as sorted relative POSIX paths; hidden entries skipped. Files in an
    image format this project does not decode (UNSUPPORTED_IMAGE_FORMATS) are appended to `unsupported`."""
    found = []
    for current, dirs, names in fileio.walk(folder):
        dirs[:] = [name for name in dirs if not _is_hidden(name)]
        relative = Path(current).relative_to(folder)
        for name in names:
            suffix = Path(name).suffix.lower()
            if not _is_hidden(name) and suffix in IMAGE_EXTENSIONS:
                found.append((relative / name).as_posix())
            elif not _is_hidden(name) and suffix in UNSUPPORTED_IMAGE_FORMATS and unsupported is not None:
                unsupported.append((relative / name).as_posix())
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class _Copy:
    source: Path  # the image file as listed
    target: Path
    real: str  # where it really is, every link resolved
    linked: bool  # reached through a link (the file, its class folder or one in between)
    escaped: bool  # its class folder's or its own name is not UTF-8: the target's has those bytes escaped


def _plan_copies(split_dir: Path, destination: Path, class_folders: list[str], *, root: Path,
                 skipped: list[dict[str, str]]) -> list[_Copy]:
    """Every image file of each class folder, and where it goes (destination/<class>/<relative path>, escaped).
    Appended to `skipped` ({"file": path under `root`, "reason"}): files in a format not decoded here, and files
    that are not regular files (a FIFO would block the copy forever, a device is no image) or links to nothing:
    never opened."""
    split_real = os.path.realpath(split_dir)
    plan = []
    for name in class_folders:
        unsupported: list[str] = []
        for relative in image_files(split_dir / name, unsupported=unsupported):
            file = split_dir / name / relative
            try:
                mode = os.stat(file).st_mode  # follows links: what a copy would open
            except OSError as error:
                skipped.append({"file": _shown(file, root), "reason": f"cannot be read ({error.strerror})"})
                continue
            if not stat.S_ISREG(mode):
                skipped.append({"file": _shown(file, root),
                                "reason": "not a regular file (a FIFO, socket or device); never opened"})
                continue
            real = os.path.realpath(file)
            target = destination / escape_name(name) / escape_name(relative)
            plan.append(_Copy(source=file, target=target, real=real,
                              linked=real != os.path.join(split_real, name, relative),
                              escaped=target != destination / name / relative))
        for relative in unsupported:
            file = split_dir / name / relative
            skipped.append({"file": _shown(file, root), "reason": f"{UNSUPPORTED_IMAGE_FORMATS[file.suffix.lower()]} "
                            "images are not decoded here; convert them to PNG or JPEG"})
    return plan


def _shown(file: Path, root: Path) -> str:
    """A skipped file as the user knows it: its path under the data set's folder (escaped, if not UTF-8)."""
    return escape_name(file.relative_to(root).as_posix())


def escape_name(name: str) -> str:
    """`name` as UTF-8 text: bytes that are not UTF-8 (which Python holds as surrogates) become `\\xe9`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _check_escaped_names(path: str, staging: Path, copies: list[_Copy]) -> list[str]:
    """The images whose names were escaped (relative to staging), logged; refuse two that escape to one name."""
    sources: dict[Path, Path] = {}
    for copy in copies:
        if sources.setdefault(copy.target, copy.source) != copy.source:
            raise DataSourceError(f"{path}: {escape_name(str(sources[copy.target]))} and "
                                  f"{escape_name(str(copy.source))} both become {copy.target.relative_to(staging)} "
                                  "once their names are UTF-8; rename one of them")
    escaped = sorted(copy.target.relative_to(staging).as_posix() for copy in copies if copy.escaped)
    if escaped:
        log.warning("%s: %d file name(s) are not UTF-8 (written on Windows, in Latin-1?); kept with the bytes escaped: "
                    "%s", path, len(escaped), ", ".join(escaped[:10]) + (" ..." if len(escaped) > 10 else ""))
    return escaped


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


def iter_examples(raw_dir: Path, info: dict, class_names: list[str]) -> Iterator[raw.RawExample]:
    """Every image file, train then test, by class, then sorted path; decoded later (by preprocess)."""
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
                yield raw.RawExample(split=split, label=label, original=original, path=base / original)
