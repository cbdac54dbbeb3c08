"""Runs: each training stage opens one and records its id in `run.json` beside the model, so the evaluate stage can
add test metrics to the same run and group the runs of one pipeline execution: under the run `mlflow run` opened
(MLFLOW_RUN_ID) when there is one, else under a parent "comparison" run. Tags say which commit, DVC experiment
and data each run used; metrics are named for what they measure (`train_`, `val_`, `test_`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from imgclf import artifacts, fileio
from imgclf.config import Params, flatten, params_to_dict, whole
from imgclf.tracking.datasets import PREPARED_DIGEST_TAG, log_prepared_data, prepared_digest
from imgclf.tracking.store import OUTER_RUN_ENV, configure, is_store_failure, outer_run_id, store_errors

# Set by DVC, under `dvc exp run`, for the experiment (dvc/repo/experiments/queue/base.py passes them to the
# stages as `run_env`).
DVC_EXP_NAME_ENV = "DVC_EXP_NAME"

DVC_EXP_BASELINE_ENV = "DVC_EXP_BASELINE_REV"

TEST_PREFIX = "test_"

# Keras names an epoch's training metrics bare (`accuracy`, `loss`) and the validation ones `val_<name>`; in MLflow
# each metric says what it measures (`train_accuracy`, `val_accuracy`, `test_accuracy`). history.csv keeps Keras's
# names (dvc.yaml's plots read them).
TRAIN_PREFIX = "train_"

VALIDATION_PREFIX = "val_"

KERAS_TRAINING_METRICS = ("loss", "accuracy")  # the loss and the metric training/recipe.py compiles with

# Written by DVC while the pipeline runs, so it never makes the code "dirty".
GIT_DIRTY_IGNORED = ("dvc.lock",)



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
    try:
        with context as run:
            yield run
    finally:  # mlflow.end_run() unsets MLFLOW_RUN_ID too: a later run of this process would leave the group
        if saved is not None:
            os.environ[OUTER_RUN_ENV] = saved


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
                if is_store_failure(error):
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
