"""The MLflow store: an embedded SQLite file in the project by default (no server), or MLFLOW_TRACKING_URI;
its lock, its errors as `TrackingStoreError`, and the experiment the pipeline logs to."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import mlflow
import sqlalchemy.exc
from filelock import FileLock, Timeout

from imgclf import artifacts, workspace
from imgclf.errors import TrackingStoreError

log = logging.getLogger(__name__)

# `mlflow run` exports the id of the run it opened; `mlflow.start_run()` would silently resume that run.
OUTER_RUN_ENV = "MLFLOW_RUN_ID"
SQLITE_PREFIX = "sqlite:///"

STORE_LOCK_SUFFIX = ".lock"

STORE_LOCK_TIMEOUT_S = 120  # a first migration of a new store takes seconds on a busy machine

# What the experiment is, in the values of MLflow's ExperimentKind enum (mlflow/server/js). MLflow 3.17's UI does
# not read it: it shows GenAI or model-training pages by a per-browser mode, which `make ui` sets (tracking_ui).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"

MODEL_DEVELOPMENT = "custom_model_development"

# The UI's mode (GenAI or model training) for one address, whatever the browser's own setting: `?workflowType=...`.
WORKFLOW_TYPE_PARAM = "workflowType"

MACHINE_LEARNING = "machine_learning"

log = logging.getLogger(__name__)


def store_root(project_root: Path) -> Path:
    """The directory of the embedded store: the user's project root, also for a queued experiment, whose
    temporary copy DVC deletes afterwards (`workspace.user_project_root`)."""
    return workspace.user_project_root(project_root)


def tracking_uri(project_root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store in the project's root (see `store_root`)."""
    store = store_root(project_root) / artifacts.MLFLOW_STORE_FILE
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store}"


def ui_experiment_id(uri: str, experiment: str) -> str:
    """The id of `experiment` in the store `mlflow ui` will show; a one-line error before the pipeline made it."""
    database = sqlite_path(uri)
    if database is not None and not database.is_file():  # MLflow would create an empty store there
        raise TrackingStoreError(f"no MLflow store at {database} yet: run the pipeline first (dvc repro)")
    with store_errors(uri):
        found = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    if found is None:
        where = uri.removeprefix(SQLITE_PREFIX)
        raise TrackingStoreError(f"no MLflow experiment {experiment!r} in {where} yet: run the pipeline first "
                                 "(dvc repro), or name another with mlflow.experiment in params.yaml")
    return found.experiment_id


def runs_route(experiment_id: str) -> str:
    """The UI's route (after `#`) of an experiment's training runs.

    MLflow 3.17's UI shows GenAI pages (traces, all "No data") or model-training pages by a per-browser mode,
    whatever the experiment's `mlflow.experimentKind` tag says. `make ui`'s server makes model training the default
    (tracking_ui); the `workflowType` parameter opens the runs also in a browser switched to GenAI."""
    return f"/experiments/{experiment_id}?{WORKFLOW_TYPE_PARAM}={MACHINE_LEARNING}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (relative to the working directory, as SQLAlchemy
    resolves it), else None."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri[len(SQLITE_PREFIX):].split("?", 1)[0]).resolve()


@contextlib.contextmanager
def store_lock(uri: str, timeout: float = STORE_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store while the block runs (nothing for other stores).

    Parallel queued experiments (`dvc queue start -j N`) share the project's `mlflow.db`. MLflow waits up to 20 s
    for SQLite's write lock on each write, which covers recording metrics; but creating the database (schema
    migrations), the experiment and registered model versions are check-then-create sequences that two processes
    can interleave. Those run under this lock. The database is switched to write-ahead logging once, so `mlflow
    ui` and the other runs keep reading while one writes.

    A lock still held after `timeout` seconds is a `TrackingStoreError` naming the lock file.
    """
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    lock_file = database.with_name(database.name + STORE_LOCK_SUFFIX)
    # The file stays (as .gitignore expects): unlinking it while another process waits on it is a classic race.
    lock = FileLock(lock_file, timeout=timeout, preserve_lock_file=True)
    try:
        lock.acquire()
    except Timeout as error:
        raise TrackingStoreError(
            f"the MLflow store {database} stayed locked by another process for {timeout:g} s (lock file "
            f"{lock_file}; `fuser -v` on it names the process): let the other stage or queued experiment "
            "finish and run this again") from error
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=STORE_LOCK_TIMEOUT_S)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        yield
    finally:
        lock.release()


def is_store_failure(error: BaseException) -> bool:
    """A database error, raised as it is or wrapped by MLflow (which keeps only its text, or the cause)."""
    while error is not None:
        if isinstance(error, (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error)):
            return True
        if isinstance(error, mlflow.exceptions.MlflowException) and "sqlite3." in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def store_errors(uri: str | None = None) -> Iterator[None]:
    """Turn a corrupt, read-only or locked store into one `TrackingStoreError` line that names it."""
    try:
        yield
    except Exception as error:
        if not is_store_failure(error):
            raise
        uri = uri or mlflow.get_tracking_uri()
        where = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri
        reason = str(error).strip().splitlines()[0][:200]
        raise TrackingStoreError(
            f"the MLflow tracking store {where} cannot be used ({reason}): if it is locked, let the other run "
            "finish; if it is read-only, fix its permissions; if it is corrupt, move it aside (a fresh one is "
            "created) or set MLFLOW_TRACKING_URI to another store") from error


def configure(project_root: Path, experiment: str) -> str:
    """Point MLflow at the store and select (or create) the experiment; return the experiment id.

    Under `mlflow run`, the experiment is the one its run is in: a child run must live in its parent's
    experiment to show nested in the UI. `mlflow run . --experiment-name <mlflow.experiment>` makes the two agree.
    """
    uri = tracking_uri(project_root)
    with store_errors(uri):
        return _configure(uri, experiment, project_root)


def end_abandoned_run(run_id: str) -> None:
    """Mark a run whose training will never continue (its resume state was discarded) KILLED, not RUNNING."""
    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
            log.info("ended MLflow run %s as KILLED: its interrupted training is not resumed", run_id)
    except mlflow.exceptions.MlflowException as error:  # the store was reset since: nothing to end
        log.debug("could not end abandoned run %s: %s", run_id, error)


def _configure(uri: str, experiment: str, project_root: Path) -> str:
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        return _select_experiment(project_root, uri, experiment)


def _select_experiment(project_root: Path, uri: str, experiment: str) -> str:
    outer = outer_run_id()
    if outer is not None:
        try:
            outer_experiment_id = mlflow.MlflowClient().get_run(outer).info.experiment_id
        except mlflow.exceptions.MlflowException as error:
            raise TrackingStoreError(f"{OUTER_RUN_ENV}={outer} is set (by `mlflow run`?) but no such run is in the "
                                     f"tracking store {uri}: unset {OUTER_RUN_ENV} or point MLFLOW_TRACKING_URI at "
                                     "the store `mlflow run` used") from error
        outer_name = mlflow.MlflowClient().get_experiment(outer_experiment_id).name
        if outer_name != experiment:
            log.warning("recording in MLflow experiment %r, the one of the `mlflow run` run %s, not %r from "
                        "params.yaml (mlflow.experiment); pass --experiment-name %s to `mlflow run` to use it",
                        outer_name, outer, experiment, experiment)
        mlflow.set_experiment(experiment_id=outer_experiment_id)
        _mark_model_development(outer_experiment_id)
        return outer_experiment_id
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        experiment_id = existing.experiment_id
    else:
        artifact_location = None
        if uri.startswith("sqlite:"):  # keep artifacts beside the embedded store, not in the working dir
            artifact_location = (store_root(project_root) / artifacts.MLFLOW_ARTIFACT_DIR).as_uri()
        experiment_id = mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment_id=experiment_id)
    _mark_model_development(experiment_id)
    return experiment_id


def _mark_model_development(experiment_id: str) -> None:
    """Tag the experiment as model development (for clients that read the tag); a kind someone set is kept."""
    client = mlflow.MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)


def outer_run_id() -> str | None:
    """The run `mlflow run` opened for this command (MLFLOW_RUN_ID), if any: the group of our runs."""
    return os.environ.get(OUTER_RUN_ENV) or None
