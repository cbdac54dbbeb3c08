"""The fingerprint of data.path's local folder or archive: what `download` depends on, never a link to the data.

Why not let DVC hash the data itself through a link in the project (the earlier design)? A link that git or DVC
tracks is a door into the user's data: `git stash` (which `dvc exp run --queue` runs), `git checkout` and
`dvc exp apply` write the committed version of that path, and they wrote it *through* the link, replacing a
user's photo archive with a 154-byte placeholder. A link nobody tracks is missing from the temporary copies
queued experiments run in, where DVC refuses a stage with a missing dependency. So the project holds no link:
the `fingerprint_data` stage (`always_changed` in dvc.yaml, seconds, no TensorFlow) reads data.path on every
`dvc repro`, in the workspace and in queued experiments alike, and writes a content digest into the project;
`download` depends on that file. Nothing but this module's reads ever touches the user's data.

`dvc status` therefore lists `fingerprint_data` as "always changed" and cannot say whether the data changed
until `dvc repro` looks; `dvc repro` never calls a changed folder up to date, and reruns nothing after
`download` when the digest is the same. Reading every byte on each repro would be slow for a large folder, so
file digests are cached by (path, size, modification time, inode) in the user's `.dvc/tmp/`, as DVC's own state
database does for its outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

from imgclf import artifacts, fileio, workspace
from imgclf.data import download
from imgclf.errors import DataSourceError

log = logging.getLogger(__name__)

# The digest cache, in the user's project (`dvc exp run --queue` copies are deleted): .dvc/tmp is DVC's scratch.
CACHE_FILE = ".dvc/tmp/imgclf-data-digests.json"
# The project's own outputs and DVC's folder: data.path inside one of them would have `download` read (and
# `dvc repro` replace) the pipeline's own files.
PROJECT_OUTPUTS = ("data", "models", "results", ".dvc", ".git")


def local_data_path(source: str, path: str | None) -> str | None:
    """`path` when it names a local file or folder that `download` reads; None otherwise."""
    if path is None or source == "synthetic" or download.is_url(path):
        return None
    return path


def checked_local_path(path: str, *, project: Path) -> Path:
    """data.path as an absolute path, refused (one `DataSourceError` line) when it is missing, not a regular file
    or folder (a FIFO would block every reader, a device is not data), or inside the project's own outputs."""
    absolute = workspace.resolve_user_path(path)
    try:
        mode = absolute.stat().st_mode
    except FileNotFoundError:
        raise DataSourceError(f"data.path {path!r} does not exist (looked for {absolute}); give an existing folder "
                              "or archive, or an http(s) URL") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataSourceError(f"data.path {path!r} is not a regular file or folder (a FIFO, socket or device?); "
                              "point it at a folder of class folders or an archive")
    real, root = Path(os.path.realpath(absolute)), Path(os.path.realpath(workspace.user_project_root(project)))
    if real == root or root.is_relative_to(real):
        raise DataSourceError(f"data.path {path!r} contains this project ({root}), whose outputs would become its "
                              "own input; put the photos in a folder of their own")
    for name in PROJECT_OUTPUTS:
        if real.is_relative_to(root / name):
            raise DataSourceError(f"data.path {path!r} is inside the project's own {name}/ folder, which the "
                                  "pipeline and DVC rewrite; move the data to a folder of its own")
    return absolute


def fingerprint(source: str, path: str | None, *, project: Path) -> dict:
    """What `download` depends on: {"kind": "folder" | "archive" | "none", "digest", "files", "bytes"}.

    The digest covers every regular file's relative path and content (a folder) or the file's content (an
    archive), not how data.path is spelled: one folder has one digest. Links inside a folder that lead out of
    it are listed by name only, as `download` skips them; special files are left out, as `download` never
    opens them."""
    local = local_data_path(source, path)
    if local is None:
        return {"kind": "none", "why": "data.path is null or an http(s) URL, or data.source is synthetic: the "
                "download is checked by its sha256 instead"}
    absolute = checked_local_path(local, project=project)
    with _DigestCache(workspace.user_project_root(project) / CACHE_FILE) as cache:
        if absolute.is_file():
            size = absolute.stat().st_size
            return {"kind": "archive", "digest": cache.digest(absolute), "files": 1, "bytes": size}
        return _folder_fingerprint(absolute, cache)


def _folder_fingerprint(folder: Path, cache: _DigestCache) -> dict:
    boundary = os.path.realpath(folder)
    listing = hashlib.sha256()
    files = total = 0
    for directory, subdirectories, names in fileio.walk(folder):  # never follows a linked folder; bounded depth
        subdirectories.sort()
        for name in sorted([*names, *(entry for entry in subdirectories
                                      if os.path.islink(os.path.join(directory, entry)))]):
            file = Path(directory, name)
            relative = file.relative_to(folder).as_posix()
            real = os.path.realpath(file)
            if file.is_symlink() and not (real == boundary or real.startswith(boundary + os.sep)):
                listing.update(f"outside-link\0{relative}\n".encode("utf-8", "surrogateescape"))
                continue
            try:
                info = os.stat(file)
            except OSError:  # a dangling link: download skips it too
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            listing.update(f"file\0{relative}\0{cache.digest(file)}\n".encode("utf-8", "surrogateescape"))
            files += 1
            total += info.st_size
    return {"kind": "folder", "digest": listing.hexdigest(), "files": files, "bytes": total}


class _DigestCache:
    """sha256 of files by (real path, size, mtime, inode): a file is read again only when one of them changed."""

    def __init__(self, path: Path):
        self._path = path
        self._entries: dict[str, list] = {}
        self._used: dict[str, list] = {}

    def __enter__(self) -> _DigestCache:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self._path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self._entries = loaded
        return self

    def digest(self, file: Path) -> str:
        real = os.path.realpath(file)
        info = os.stat(real)
        key = [info.st_size, info.st_mtime_ns, info.st_ino]
        entry = self._entries.get(real)
        if isinstance(entry, list) and entry[:3] == key and len(entry) == 4:
            digest = entry[3]
        else:
            digest = fileio.sha256_file(Path(real))
        self._used[real] = [*key, digest]
        return digest

    def __exit__(self, *exc_info) -> None:
        if exc_info[0] is not None or not self._used:
            return
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs a re-read next time
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fileio.atomic_write_json(self._path, self._used)  # only what this data set uses: no unbounded growth


def write(out: Path, record: dict) -> None:
    """Write the fingerprint; an unchanged one keeps its bytes, so DVC sees `download`'s input unchanged."""
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    out = Path(out)
    if out.is_file() and out.read_text(encoding="utf-8") == text:
        return
    fileio.atomic_write_text(out, text)
    log.info("data.path fingerprint: %s", {key: value for key, value in record.items() if key != "why"})


def remove_legacy_link(project: Path) -> None:
    """An earlier version kept data/input as a link to the data; remove the link (never what it points to)."""
    link = Path(project) / artifacts.LEGACY_INPUT_LINK
    if link.is_symlink() or (link.is_file() and link.read_bytes().startswith(b"No local data to hash")):
        link.unlink()
