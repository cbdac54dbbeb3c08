"""data/input: the data source's local file or folder, where DVC can hash it.

DVC decides whether `download` is stale from its deps. The `data.path` string alone would let a changed photo
folder pass as up to date, and dvc.yaml cannot template `${data.path}` into the deps: DVC 3 renders null as
the literal path "None" (or fails), and null is what the keras.datasets and synthetic sources use. So the
first stage points one fixed path at whatever `data.path` names, and `download` depends on that path: a
symbolic link to a local folder or archive (DVC follows it and hashes the files), or a constant placeholder
when there is nothing local to hash (null, an http(s) URL, the synthetic source). The link is tracked by git,
so a fresh clone has it and `dvc status` there compares the same data.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from imgclf import fileio
from imgclf.errors import DataSourceError

# What data/input holds when there is nothing local to hash; constant, so it never reruns `download` itself.
PLACEHOLDER = ("No local data to hash: data.path is null or an http(s) URL, or data.source is synthetic. "
               "`download` reruns when its params change (README: data sources).\n")


def local_data_path(source: str, path: str | None) -> str | None:
    """`path` when it names a local file or folder that `download` reads; None otherwise."""
    if path is None or source == "synthetic" or urllib.parse.urlparse(path).scheme in ("http", "https"):
        return None
    return path


def point(link: Path, *, source: str, path: str | None, root: Path) -> None:
    """Make `link` a symbolic link to the local data of (`source`, `path`), else the placeholder file.

    A relative `path` is relative to `root` (where DVC runs the stages) and stays relative in the link, so the
    project can move. Only `link` itself is ever replaced, atomically; never what it points to.
    """
    link, root = Path(link), Path(root)
    local = local_data_path(source, path)
    if link.is_dir() and not link.is_symlink():
        raise DataSourceError(f"{link} is a directory; the pipeline keeps a link to data.path there. Move the "
                              f"directory elsewhere, point data.path at it, and run again")
    if local is None:
        if link.is_symlink() or not link.is_file() or link.read_text(encoding="utf-8") != PLACEHOLDER:
            fileio.atomic_write_text(link, PLACEHOLDER)  # os.replace: swaps a link, never touches its target
        return
    expanded = Path(local).expanduser()
    absolute = expanded if expanded.is_absolute() else root / expanded
    if os.path.abspath(absolute) == os.path.abspath(link):
        raise DataSourceError(f"data.path {path!r} is the pipeline's own {link}; put the data elsewhere")
    if not absolute.exists():
        raise DataSourceError(f"data.path {path!r} does not exist (looked for {absolute}); give an existing "
                              "folder or archive, or an http(s) URL")
    target = str(absolute) if expanded.is_absolute() else os.path.relpath(absolute, link.parent.resolve())
    if link.is_symlink() and os.readlink(link) == target:
        return  # unchanged: leave its mtime alone
    try:
        fileio.atomic_symlink(target, link)
    except OSError as error:  # Windows without Developer Mode, or a file system without links
        raise DataSourceError(f"cannot create the link {link} -> {target} ({error.strerror}); enable symbolic "
                              "links (Windows: Developer Mode) or run on a file system that has them") from error
