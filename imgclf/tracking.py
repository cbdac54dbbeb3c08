"""MLflow on an embedded store: SQLite file in the project, no server, overridable by MLFLOW_TRACKING_URI.

Each training stage opens one run and records its id in `run.json` beside the model, so the evaluate
stage can add test metrics to the same run and group the runs of one pipeline execution: under the run
`mlflow run` opened (MLFLOW_RUN_ID) when there is one, else under a parent "comparison" run. The evaluate
stage also registers both models (`imgclf-scratch`, `imgclf-transfer`) and moves the `champion` alias to
the one with the better test accuracy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import sqlalchemy.exc
from filelock import FileLock, Timeout
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource

from imgclf import artifacts, fileio, workspace
from imgclf.artifacts import CHAMPION
from imgclf.config import Params, flatten, params_to_dict, whole
from imgclf.errors import RegistryError, TrackingStoreError

# `mlflow run` exports the id of the run it opened; `mlflow.start_run()` would silently resume that run.
OUTER_RUN_ENV = "MLFLOW_RUN_ID"
# Set by DVC, under `dvc exp run`, for the experiment (dvc/repo/experiments/queue/base.py passes them to the
# stages as `run_env`).
DVC_EXP_NAME_ENV = "DVC_EXP_NAME"
DVC_EXP_BASELINE_ENV = "DVC_EXP_BASELINE_REV"
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
TEST_PREFIX = "test_"
PREPARED_DIGEST_TAG = "data.prepared_digest"  # tracking.prepared_digest: the same images, the same digest
# Keras names an epoch's training metrics bare (`accuracy`, `loss`) and the validation ones `val_<name>`; in MLflow
# each metric says what it measures (`train_accuracy`, `val_accuracy`, `test_accuracy`). history.csv keeps Keras's
# names (dvc.yaml's plots read them).
TRAIN_PREFIX = "train_"
VALIDATION_PREFIX = "val_"
KERAS_TRAINING_METRICS = ("loss", "accuracy")  # the loss and the metric training/common.py compiles with
# Written by DVC while the pipeline runs, so it never makes the code "dirty".
GIT_DIRTY_IGNORED = ("dvc.lock",)

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


def outer_run_id() -> str | None:
    """The run `mlflow run` opened for this command (MLFLOW_RUN_ID), if any: the group of our runs."""
    return os.environ.get(OUTER_RUN_ENV) or None


def _is_store_failure(error: BaseException) -> bool:
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
        if not _is_store_failure(error):
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


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One epoch's history row as MLflow metrics: its float values, training metrics named `train_<name>`, and
    the validation metrics first, `val_accuracy` leading.

    The order matters: MLflow keeps a run's metrics in the order they were first logged, and the compare page's
    parallel-coordinates plot starts on the first metric the compared runs share. Keras puts training accuracy
    first, which made the plot open on the final training accuracy."""
    metrics = {(TRAIN_PREFIX + key if key in KERAS_TRAINING_METRICS else key): value
               for key, value in row.items() if isinstance(value, float)}
    validation = sorted(key for key in metrics if key.startswith(VALIDATION_PREFIX))
    return {key: metrics[key] for key in [*validation, *(key for key in metrics if key not in validation)]}


def as_test_metric(key: str) -> str:
    """`test_<key>`, without doubling a prefix the key already has (`test_images`, not `test_test_images`)."""
    return key if key.startswith(TEST_PREFIX) else TEST_PREFIX + key


class PreparedDataset(MetaDataset):
    """The prepared data as an MLflow dataset input: a reference (name, DVC digest, location) with the split
    sizes as its profile, not a copy of the images."""

    def __init__(self, *, source: LocalArtifactDatasetSource, name: str, digest: str | None,
                 split_sizes: dict[str, int]):
        self._split_sizes = dict(split_sizes)
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, int]:
        return dict(self._split_sizes)

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def prepared_dataset(project_root: Path, *, name: str) -> PreparedDataset | None:
    """The prepared data of `project_root` (its meta.json split counts, `prepared_digest` as digest); None before
    the preprocess stage ran."""
    folder = Path(project_root).resolve() / artifacts.PREPARED_DIR
    if not (folder / artifacts.META_FILE).is_file():
        return None
    counts = artifacts.read_prepared_meta(folder).counts
    return PreparedDataset(source=LocalArtifactDatasetSource(folder.as_uri()), name=name,
                           digest=prepared_digest(project_root),
                           split_sizes={f"{split}_images": int(count) for split, count in counts.items()})


def log_prepared_data(params: Params, *, project_root: Path, context: str) -> None:
    """Log the prepared data as the active run's dataset input (`training` or `evaluation`), so the runs table's
    Dataset column says which data a run saw."""
    dataset = prepared_dataset(project_root, name=f"{whole(params).data.source}-prepared")
    if dataset is None:
        log.warning("no %s/%s: the run has no dataset input (run the preprocess stage)", artifacts.PREPARED_DIR,
                    artifacts.META_FILE)
        return
    mlflow.log_input(dataset, context=context, tags={key: str(value) for key, value in dataset.profile.items()})


def git_tags(project_root: Path) -> dict[str, str]:
    """The commit the code came from and whether the working tree had uncommitted changes to tracked files
    (params.yaml included; dvc.lock, which DVC rewrites while the pipeline runs, excluded)."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=project_root, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    excluded = [f":(exclude){path}" for path in GIT_DIRTY_IGNORED]
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    tags = {"git.commit": commit, "git.dirty": str(bool(changed)).lower(), "mlflow.source.git.commit": commit}
    if changed:  # which files, so "dirty" can be judged at a glance (params.yaml under `dvc exp run`)
        files = sorted(line.split(maxsplit=1)[-1] for line in changed.splitlines())
        tags["git.dirty_files"] = ", ".join(files)[:1000]
    return tags


def prepared_digest(project_root: Path) -> str | None:
    """The content digest of the prepared data: its classes, image size and the bytes of every TFRecord shard (the
    images, labels and ids a model sees), so the same photos have one digest in MLflow however data.path was
    spelled, wherever the project lies. None before the preprocess stage ran."""
    folder = Path(project_root).resolve() / artifacts.PREPARED_DIR
    if not (folder / artifacts.META_FILE).is_file():
        return None
    return _prepared_digest(str(folder), (folder / artifacts.META_FILE).stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _prepared_digest(folder: str, _meta_mtime_ns: int) -> str:
    meta = artifacts.read_prepared_meta(Path(folder))
    digest = hashlib.sha256(json.dumps(
        {"class_names": list(meta.class_names), "image_shape": list(meta.image_shape), "resize": meta.resize},
        sort_keys=True).encode())
    for split in sorted(meta.shards):
        for shard in meta.shards[split]:
            digest.update(f"{split}/{shard}:{fileio.sha256_file(Path(folder) / shard)}\n".encode())
    return digest.hexdigest()[:32]


def dvc_experiment() -> str | None:
    """The name `dvc exp run` gave this experiment (DVC_EXP_NAME), None under `dvc repro`."""
    return os.environ.get(DVC_EXP_NAME_ENV) or None


def run_tags(params: Params, *, stage: str, project_root: Path, data_sha256: str | None) -> dict[str, str]:
    """What a run is and where it came from: stage, git commit and dirty flag, DVC experiment, data checksums,
    and the `mlflow run` run it belongs to."""
    # Tags and names are lineage: data.source, which a training stage does not read itself (config.whole).
    tags = {"stage": stage, "data.source": whole(params).data.source, **git_tags(project_root)}
    if data_sha256:  # the downloaded archive's digest (none for generated data)
        tags["data.sha256"] = data_sha256
    prepared = prepared_digest(project_root)
    if prepared:
        tags[PREPARED_DIGEST_TAG] = prepared
    if dvc_experiment():
        tags["dvc.experiment"] = dvc_experiment()
        if os.environ.get(DVC_EXP_BASELINE_ENV):
            tags["dvc.baseline_rev"] = os.environ[DVC_EXP_BASELINE_ENV]
    if outer_run_id():
        tags["group_run_id"] = outer_run_id()
    return tags


def run_name(params: Params, *, model: str) -> str:
    """`scratch-cnn`, `transfer-<backbone>` or `comparison`, suffixed with the DVC experiment name."""
    if model == "transfer":
        detail = "-" + Path(whole(params).transfer.backbone).name.removesuffix(".keras")
    elif model == "scratch":
        detail = "-cnn"
    else:
        detail = ""
    experiment = dvc_experiment()
    return f"{model}{detail}" + (f"-{experiment}" if experiment else "")


@contextlib.contextmanager
def start_run(*, run_name: str | None = None, tags: dict[str, str] | None = None,
              run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` that opens a new run nested under the `mlflow run` run when there is one (instead
    of resuming it, which is what MLFLOW_RUN_ID alone would do), or reopens `run_id`."""
    outer = outer_run_id()
    saved = os.environ.pop(OUTER_RUN_ENV, None)
    try:
        if run_id is not None:
            context = mlflow.start_run(run_id=run_id)
        else:
            context = mlflow.start_run(run_name=run_name, tags=tags, parent_run_id=outer)
    finally:
        if saved is not None:  # later runs of this process (and its children) still belong to the group
            os.environ[OUTER_RUN_ENV] = saved
    with context as run:
        yield run


@contextlib.contextmanager
def training_run(params: Params, *, model: str, project_root: Path, out_dir: Path, data_sha256: str | None,
                 logged_params: dict[str, Any], run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run of one training stage (or reopen `run_id`, when resuming) and write its id to
    `out_dir/run.json`."""
    configure(project_root, params.mlflow.experiment)
    run_file = Path(out_dir) / artifacts.RUN_FILE
    with store_errors():
        if run_id is not None:
            try:
                mlflow.get_run(run_id)
            except mlflow.exceptions.MlflowException as error:
                if _is_store_failure(error):
                    raise
                run_id = None  # the store was reset since: start afresh
        tags = run_tags(params, stage=f"train_{model}", project_root=project_root, data_sha256=data_sha256)
        if run_id is None:
            context = start_run(run_name=run_name(params, model=model), tags={**tags, "model": model})
        else:
            context = start_run(run_id=run_id)
        try:
            with context as run:
                if run_id is None:
                    mlflow.log_params({key: _param_value(value) for key, value in logged_params.items()})
                    log_prepared_data(params, project_root=project_root, context="training")
                fileio.atomic_write_json(run_file, {
                    "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                    "tracking_uri": mlflow.get_tracking_uri(),
                })
                yield run
        except BaseException:  # Ctrl-C too
            # run.json belongs with a finished model.keras: one left by a failed training would point at a
            # FAILED (or, when the store broke, never-ended) run.
            run_file.unlink(missing_ok=True)
            raise


def stage_params(params: Params, *sections: str) -> dict[str, Any]:
    """Flat `section.key` params of the named sections plus the seed: what a run should show (its lineage, so
    also sections the stage does not read itself: `config.whole`)."""
    everything = params_to_dict(whole(params))
    chosen = {"seed": everything["seed"], "deterministic": everything["deterministic"]}
    for section in sections:
        chosen[section] = everything[section]
    return flatten(chosen)


def _param_value(value: Any) -> str:
    return "null" if value is None else str(value)


def read_run(model_dir: Path) -> dict[str, str]:
    return fileio.read_json(Path(model_dir) / artifacts.RUN_FILE)


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged model, taken from this environment (no slow inference)."""
    from importlib import metadata

    names = ["keras", "numpy", "pillow", "pyyaml"]  # pyyaml: imgclf.config, imported by the logged model's code
    try:
        metadata.version("tensorflow-cpu")
        names.append("tensorflow-cpu")
    except metadata.PackageNotFoundError:
        names.append("tensorflow")
    requirements = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            requirements.append(f"{name}=={metadata.version(name)}")
    return requirements


# --- Model registry ------------------------------------------------------------------------------------------

REGISTERED_MODELS = {"scratch": "imgclf-scratch", "transfer": "imgclf-transfer"}
CHALLENGER = "challenger"
MODEL_SHA_TAG = "model_sha256"  # sha256 of model.keras: the same file is never registered twice
LOGGED_MODEL_NAME = "model"  # what the training stages log: runs:/<run_id>/model


def find_version(client: mlflow.MlflowClient, name: str, model_sha256: str):
    """The newest version of registered model `name` tagged with this model file's sha256, or None."""
    try:
        versions = client.search_model_versions(f"name = '{name}' AND tags.{MODEL_SHA_TAG} = '{model_sha256}'")
    except mlflow.exceptions.MlflowException as error:
        if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code):
            return None
        raise
    return max(versions, key=lambda version: int(version.version), default=None)


def logged_model_uri(client: mlflow.MlflowClient, run_id: str) -> str:
    """`models:/<model id>` of the model a training run logged under LOGGED_MODEL_NAME (MLflow 3 keeps logged
    models beside, not inside, the run's artifacts: registering `runs:/<id>/model` works but warns each time);
    `runs:/<id>/model` when none is found, so the registry's own error says what is missing."""
    experiment_id = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{LOGGED_MODEL_NAME}'")
    newest = max(models, key=lambda model: model.creation_timestamp, default=None)
    return f"models:/{newest.model_id}" if newest is not None else f"runs:/{run_id}/{LOGGED_MODEL_NAME}"


def register(client: mlflow.MlflowClient, *, name: str, run_id: str, model_file: Path,
             tags: dict[str, str]) -> tuple[Any, bool]:
    """Register `runs:/<run_id>/model` as a version of `name`, or reuse the version of the same model file.

    Returns (model version, created). Tags of a reused version are updated (test accuracy, comparison run).
    """
    digest = fileio.sha256_file(model_file)
    existing = find_version(client, name, digest)
    if existing is not None:
        for key, value in tags.items():
            client.set_model_version_tag(name, existing.version, key, value)
        return client.get_model_version(name, existing.version), False
    uri = logged_model_uri(client, run_id)
    try:
        version = mlflow.register_model(uri, name, tags={**tags, MODEL_SHA_TAG: digest})
    except mlflow.exceptions.MlflowException as error:
        raise RegistryError(f"could not register {uri} as {name!r} in {mlflow.get_tracking_uri()}: {error}. "
                            f"The training run must log its model under the name {LOGGED_MODEL_NAME!r}; rerun "
                            "the training stage (dvc repro --force train_<model>) if its run was deleted") from error
    return client.get_model_version(name, version.version), True  # with its tags


def model_of(registered_name: str) -> str | None:
    """The pipeline's short model name (`scratch`, `transfer`) of a registered model name, None for another."""
    return next((model for model, name in REGISTERED_MODELS.items() if name == registered_name), None)


def current_champion(client: mlflow.MlflowClient):
    """The model version holding the `champion` alias (on whichever registered model has it), or None."""
    for name in REGISTERED_MODELS.values():
        try:
            return client.get_model_version_by_alias(name, CHAMPION)
        except mlflow.exceptions.MlflowException as error:
            if _is_store_failure(error):
                raise
    return None


def move_alias(client: mlflow.MlflowClient, alias: str, version) -> None:
    """`alias` on `version`, and off every other registered model: `models:/<name>@<alias>` resolves for exactly
    one of them."""
    client.set_registered_model_alias(version.name, alias, version.version)
    for name in REGISTERED_MODELS.values():
        if name != version.name:
            with contextlib.suppress(mlflow.exceptions.MlflowException):  # absent: nothing to remove
                client.delete_registered_model_alias(name, alias)


def evaluation_artifact(client: mlflow.MlflowClient, run_id: str, file_name: str) -> dict | None:
    """The arrays of `evaluation/<file_name>` (an .npz the evaluate stage logged to the run), or None when the run
    has none (evaluated by an older version, or its artifacts were removed)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, f"evaluation/{file_name}", folder)
        except (mlflow.exceptions.MlflowException, OSError) as error:
            if _is_store_failure(error):
                raise
            return None
        with np.load(path, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}


def champion_uri(client: mlflow.MlflowClient | None = None) -> str:
    """`models:/<name>@champion` of whichever registered model holds the alias; a clear error when none does."""
    with store_errors():  # a locked or corrupt store is its own one-line error, not "no champion"
        client = client or mlflow.MlflowClient()
        for name in REGISTERED_MODELS.values():
            try:
                client.get_model_version_by_alias(name, CHAMPION)
                return f"models:/{name}@{CHAMPION}"
            except mlflow.exceptions.MlflowException as error:
                if _is_store_failure(error):
                    raise
    raise RegistryError(f"no registered model has the alias {CHAMPION!r} in {mlflow.get_tracking_uri()}: run the "
                        "pipeline through the evaluate stage first (dvc repro), or pass a model path or URI")
