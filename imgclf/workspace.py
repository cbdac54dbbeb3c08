"""Where the user's project is, also while DVC runs a stage in a temporary copy of it.

`dvc exp run --queue` (and `--temp`) runs the stages in a copy under `<project>/.dvc/tmp/exps/` that DVC deletes
afterwards. Two things must still be found in the user's project, not in that copy: the MLflow store (or every
queued run would record into a store that vanishes with it) and a relative `data.path` (the user's photo folder
is in their project, not in the copy, which holds only git-tracked files). DVC exports the original project root
as DVC_ROOT to those stages (dvc/repo/experiments/queue/base.py) and the repository root to every other stage
(dvc/stage/run.py); outside DVC (tests, `imgclf predict`, a stage run by hand) the working directory is the root.
"""

from __future__ import annotations

import os
from pathlib import Path

DVC_ROOT_ENV = "DVC_ROOT"


def user_project_root(default: Path | None = None) -> Path:
    """The user's project: DVC_ROOT when DVC set it to an existing folder, else `default` (the working
    directory when not given)."""
    dvc_root = os.environ.get(DVC_ROOT_ENV)
    if dvc_root and Path(dvc_root).is_dir():
        return Path(dvc_root).resolve()
    return Path(default if default is not None else Path.cwd()).resolve()


def resolve_user_path(path: str) -> Path:
    """A user-given local path as an absolute one: `~` expanded, a relative path taken from the user's project
    (`user_project_root`), however and wherever the stage runs."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else user_project_root() / expanded


def in_temporary_copy() -> bool:
    """True in a stage of a queued (or `--temp`) experiment: DVC runs it outside the user's project."""
    return user_project_root() != Path.cwd().resolve()
