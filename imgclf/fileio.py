"""Small file helpers: every output is written atomically, so a killed stage never leaves half a file.

What is being written lives beside its target under a hidden name, `.<target>.tmp-<owner>-<pid>-<random>` (and
`.<target>.old-...` for a directory being replaced), renamed into place when complete. A process killed outright
(kill -9, the OOM killer) cannot remove its own: the next write into that folder does (`remove_stale_staging`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgclf import artifacts
from imgclf.errors import CorruptFileError, FolderTooDeepError, UnwritableOutputError

log = logging.getLogger(__name__)


def _owner() -> str:
    """This machine and PID namespace, as 8 hex digits: a PID only means something there (containers on one disk)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{namespace}".encode()).hexdigest()[:8]


_OWNER = _owner()
_STAGING_NAME = re.compile(r"\..+\.(?:tmp|old)-(?P<owner>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}(?:\.[A-Za-z0-9]+)?")
_swept: set[str] = set()  # folders this process has cleaned: a process killed later is cleaned at the next start


def _staging_name(target: Path, kind: str, suffix: str = "") -> Path:
    """`.<target>.<kind>-<owner>-<pid>-<random><suffix>` beside `target`: hidden, and it says whose it is."""
    return target.with_name(f".{target.name}.{kind}-{_OWNER}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging files and directories in `folder` whose process is gone (killed before it could clean
    up: 1.2 GB of a half-prepared data set, say); return them. Only names this module gives, made on this machine
    and PID namespace, and only once their process has exited: two runs at once never touch each other's. Done
    once per folder and process, so writing a thousand files into one folder lists it once."""
    key = os.path.abspath(folder)
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _STAGING_NAME.fullmatch(entry.name)
        if match is None or match["owner"] != _OWNER or not _process_is_gone(int(match["pid"])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        log.info("removed %s, left by process %s, which was killed before it finished", entry.path, match["pid"])
        removed.append(Path(entry.path))
    return removed


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
    plain open() would give (0600 while it is written); `suffix` keeps an extension a writer insists on (`.keras`).
    On any exception the temporary file is removed and `path` is untouched."""
    path = Path(path)
    refuse_special_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path.parent)
    temporary = _staging_name(path, "tmp", suffix)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # private until it is complete
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
    the mode a plain mkdir would give (the final directory's mode). Stale staging beside it goes first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent)
    folder = _staging_name(target, "tmp")
    folder.mkdir(mode=0o777)  # less the umask; never an existing directory
    return folder


def atomic_symlink(target: str, link: Path) -> None:
    """Point `link` at `target`: a new link made beside it is renamed over it, so `link` is never missing and
    a link it replaces is swapped, its target never touched. OSError when the file system has no links."""
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(link, "tmp")
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
    old = _staging_name(target, "old")
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
