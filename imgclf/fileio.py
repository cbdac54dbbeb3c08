"""Small file helpers: every output is written atomically, so a killed stage never leaves half a file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgclf import artifacts
from imgclf.errors import CorruptFileError, FolderTooDeepError, UnwritableOutputError


def umask_mode(base: int = 0o666) -> int:
    """`base` less the process umask: the mode open() would give a new file (mkstemp always gives 0600)."""
    try:  # Linux reports it without changing it (os.umask can only be read by setting it, racing threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return base & ~int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return base & ~current


class SpecialFileError(IsADirectoryError):
    """A write target that is a device, FIFO or socket: renaming a file over it would replace the node itself
    (as root, `--output /dev/null` would replace /dev/null). An OSError subclass the error policy shows in one line."""


def refuse_special_target(path: Path) -> None:
    """Refuse a target that exists and is neither a regular file nor a link (a link is replaced, not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
        raise SpecialFileError(f"{path} is {kind}, not a file; give the path of a file to write")


def check_writable_folder(folder: Path, *, option: str) -> None:
    """Refuse, before any work, an output folder nothing can be written in: a read-only folder, or one on a
    read-only file system. A probe file is created and removed in `folder`, or in its nearest existing parent
    when it is still to be made (nothing else is created): `os.access` would say yes to root in a read-only folder
    and knows nothing of a read-only mount. `option` is what the user gave, named in the error (`--output x.csv`)."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UnwritableOutputError(f"{option}: {existing} is not a folder; give a path in a folder")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".imgclf-write-probe-", dir=existing)
    except OSError as error:
        raise UnwritableOutputError(f"{option}: cannot write in {existing} ({error.strerror or error}); choose a "
                                    "folder you can write to") from None
    os.close(descriptor)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_path(path: Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh hidden file name beside `path` to write; it is renamed to `path` only if the body succeeds.

    For writers that want a file name rather than bytes (`model.save`, a download). The file gets the mode a
    plain open() would give (mkstemp's is 0600); `suffix` keeps an extension a writer insists on (`.keras`).
    On any exception the temporary file is removed and `path` is untouched."""
    path = Path(path)
    refuse_special_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.chmod(temporary, umask_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place (with the umask's mode)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Parse a JSON file written by an earlier stage, saying which stage to run when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError; `[[[...` 20,000 deep
        raise CorruptFileError(f"{path} is not valid JSON ({artifacts.json_problem(error)}); run the stage that "
                               "writes it again (dvc repro), or give the file it wrote") from None


# Folders a walk descends at most (a data folder, an archive's members): photo collections are a few deep. Python's
# os.walk and Path.rglob recurse once per level, so a tree 2,100 deep ended them in RecursionError.
MAX_FOLDER_DEPTH = 64


def walk(folder: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(folder)` (top-down, links to folders not followed: prune `dirs` in place to skip some) that raises
    `FolderTooDeepError` in one line at a folder MAX_FOLDER_DEPTH levels below `folder` that holds folders."""
    base = len(Path(folder).parts)
    for current, dirs, names in os.walk(folder):
        depth = len(Path(current).parts) - base
        if dirs and depth >= MAX_FOLDER_DEPTH:
            shown = "/".join(Path(current).parts[base:base + 3])
            raise FolderTooDeepError(f"{folder}: folders nested more than {MAX_FOLDER_DEPTH} levels deep (under "
                                     f"{shown}/...); no data set needs that many: flatten or remove them")
        yield current, dirs, names


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def staging_dir(target: Path) -> Path:
    """A fresh hidden directory beside `target` (same file system, so it can be renamed into place), with
    the mode a plain mkdir would give, not mkdtemp's 0700 (which would become the final directory's mode)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    folder.chmod(umask_mode(0o777))
    return folder


def atomic_symlink(target: str, link: Path) -> None:
    """Point `link` at `target`: a new link made beside it is renamed over it, so `link` is never missing and
    a link it replaces is swapped, its target never touched. OSError when the file system has no links."""
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    staging = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, staging)
    try:
        os.replace(staging, link)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def replace_directory(staging: Path, target: Path) -> None:
    """Put the finished `staging` directory at `target` by renames only; on failure the old target is restored.

    A directory cannot be renamed over a non-empty one, so the old target is first renamed aside, and removed
    only once the new one is in place: a crash at any point leaves either the old or the new directory."""
    staging, target = Path(staging), Path(target)
    if not os.path.lexists(target):
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Write a directory's contents into the yielded staging directory; it replaces `target` on success only.

    On any exception (a killed stage included) the staging directory is removed and `target` is untouched."""
    staging = staging_dir(target)
    try:
        yield staging
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
