"""The registry's aliases reconciled after an evaluation killed while it moved them.

The evaluate stage moves `champion` / `challenger` and then writes `runs.json`. Killed in between (kill -9, a
power cut), DVC keeps the previous `runs.json` (or restores it from its run cache, so evaluate never runs again
for those inputs), while the alias already points at the interrupted run's model: the registry and the workspace
disagree, and `models:/...@champion` serves a model no finished evaluation chose.

So each move is journaled: before moving, evaluate writes what the aliases were and what it will set, in a file
under the user's project (`.dvc/tmp/imgclf-registry-pending/`), and deletes it once its outputs are in place
(`begin` / `finish`). Every stage calls `reconcile` first (imgclf.stage_runner), and `fingerprint_data` runs on
every `dvc repro`, so the next run finds a journal whose process is gone: if that evaluation's `runs.json` was
written, its moves stand; otherwise each alias it moved, and that nobody moved since, goes back to where it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf import fileio, workspace
from imgclf.artifacts import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)

PENDING_DIR = Path(".dvc") / "tmp" / "imgclf-registry-pending"
ALIASES = (CHAMPION, CHALLENGER)
ROLLED_BACK_TAG = "promotion.rolled_back"


def pending_dir(project_root: Path) -> Path:
    """Where journals live: the user's project (a queued experiment's temporary copy is deleted with them)."""
    return workspace.user_project_root(project_root) / PENDING_DIR


def holders(client: mlflow.MlflowClient) -> dict[str, list | None]:
    """alias -> [registered model name, version] holding it, or None."""
    import mlflow

    from imgclf.tracking.registry import REGISTERED_MODELS

    held: dict[str, list | None] = dict.fromkeys(ALIASES)
    for name in REGISTERED_MODELS.values():
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # not registered yet
            for alias, version in client.get_registered_model(name).aliases.items():
                if alias in held:
                    held[alias] = [name, str(version)]
    return held


def begin(client: mlflow.MlflowClient, *, project_root: Path, comparison_id: str, runs_file: Path,
          moves: dict[str, list]) -> Path:
    """Journal the aliases as they are and the `moves` (alias -> [name, version]) about to be made."""
    import mlflow

    journal = pending_dir(project_root) / f"{comparison_id}.json"
    fileio.atomic_write_json(journal, {
        "pid": os.getpid(), "host": socket.gethostname(), "store": mlflow.get_tracking_uri(),
        "comparison_id": comparison_id, "runs_file": str(Path(runs_file).resolve()),
        "before": holders(client), "after": moves})
    return journal


def finish(project_root: Path, comparison_id: str) -> None:
    """The evaluation's outputs are in place: its moves stand."""
    (pending_dir(project_root) / f"{comparison_id}.json").unlink(missing_ok=True)


def _running(journal: dict) -> bool:
    if journal.get("host") != socket.gethostname():
        return True  # another machine's process: not ours to judge (its own next run reconciles)
    try:
        os.kill(int(journal["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _completed(journal: dict) -> bool:
    runs_file = Path(journal["runs_file"])
    with contextlib.suppress(OSError, ValueError):
        return json.loads(runs_file.read_text(encoding="utf-8")).get("comparison") == journal["comparison_id"]
    return False


def reconcile(project_root: Path) -> list[str]:
    """Settle every journal left by an evaluation that is no longer running; returns what was restored, one
    sentence per alias. Cheap when there is nothing to do (one directory listing, no MLflow import)."""
    folder = pending_dir(project_root)
    if not folder.is_dir():
        return []
    restored = []
    for path in sorted(folder.glob("*.json")):
        try:
            journal = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a journal cut short: its moves had not started (begin writes first)
            continue
        if _running(journal):
            continue
        if not _completed(journal):
            restored += _roll_back(journal)
        path.unlink(missing_ok=True)
    return restored


def _roll_back(journal: dict) -> list[str]:
    # Here, not at the top: every `dvc repro` calls `reconcile`, which needs MLflow only when a journal is left.
    import mlflow

    from imgclf.tracking.registry import move_alias, remove_alias
    from imgclf.tracking.store import store_lock

    client = mlflow.MlflowClient(tracking_uri=journal["store"])
    restored = []
    with store_lock(journal["store"]):
        now = holders(client)
        for alias, moved_to in journal["after"].items():
            if now.get(alias) != moved_to:
                continue  # never moved, or moved again since by a finished evaluation: that one stands
            before = journal["before"].get(alias)
            if before is None:
                remove_alias(client, alias)
            else:
                move_alias(client, alias, client.get_model_version(*before))
            client.set_model_version_tag(*moved_to, ROLLED_BACK_TAG,
                                         f"evaluation {journal['comparison_id']} was interrupted before it finished")
            sentence = (f"registry: {alias} was moved to {moved_to[0]} version {moved_to[1]} by an evaluation that was "
                        f"interrupted (run {journal['comparison_id']}); restored to "
                        + (f"{before[0]} version {before[1]}" if before else "no model"))
            log.warning("%s", sentence)
            restored.append(sentence)
    return restored
