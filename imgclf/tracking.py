"""MLflow on an embedded store: SQLite file in the project, no server, overridable by MLFLOW_TRACKING_URI.

Each training stage opens one run and records its id in `run.json` beside the model, so the evaluate
stage can add test metrics to the same run and group the runs of one pipeline execution under a parent
"comparison" run (nested in the UI, compared side by side).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from imgclf import fileio
from imgclf.config import Params, flatten, params_to_dict

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
RUN_FILE = "run.json"


def tracking_uri(project_root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store in the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(project_root).resolve() / STORE_FILE}"


def configure(project_root: Path, experiment: str) -> str:
    """Point MLflow at the store and select (or create) the experiment; return the experiment id."""
    uri = tracking_uri(project_root)
    mlflow.set_tracking_uri(uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        experiment_id = existing.experiment_id
    else:
        artifact_location = None
        if uri.startswith("sqlite:"):  # keep artifacts beside the embedded store, not in the working dir
            artifact_location = (Path(project_root).resolve() / ARTIFACT_DIR).as_uri()
        experiment_id = mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_tags(project_root: Path) -> dict[str, str]:
    """The commit the code came from and whether the working tree had uncommitted changes."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=project_root, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}


def run_tags(params: Params, *, stage: str, project_root: Path, data_sha256: str | None) -> dict[str, str]:
    tags = {"stage": stage, "data.source": params.data.source, **git_tags(project_root)}
    if data_sha256:
        tags["data.sha256"] = data_sha256
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    return tags


def run_name(params: Params, *, model: str) -> str:
    experiment = os.environ.get("DVC_EXP_NAME")
    detail = params.transfer.backbone.rsplit("/", 1)[-1] if model == "transfer" else "cnn"
    return f"{model}-{detail}" + (f"-{experiment}" if experiment else "")


@contextlib.contextmanager
def training_run(params: Params, *, model: str, project_root: Path, out_dir: Path, data_sha256: str | None,
                 logged_params: dict[str, Any], run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run of one training stage (or reopen `run_id`, when resuming) and write its id to
    `out_dir/run.json`."""
    configure(project_root, params.mlflow.experiment)
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            run_id = None  # the store was reset since: start afresh
    tags = run_tags(params, stage=f"train_{model}", project_root=project_root, data_sha256=data_sha256)
    if run_id is None:
        context = mlflow.start_run(run_name=run_name(params, model=model), tags={**tags, "model": model})
    else:
        context = mlflow.start_run(run_id=run_id)
    with context as run:
        if run_id is None:
            mlflow.log_params({key: _param_value(value) for key, value in logged_params.items()})
        fileio.atomic_write_json(Path(out_dir) / RUN_FILE, {
            "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
            "tracking_uri": mlflow.get_tracking_uri(),
        })
        yield run


def stage_params(params: Params, *sections: str) -> dict[str, Any]:
    """Flat `section.key` params of the named sections plus the seed: what a run should show."""
    everything = params_to_dict(params)
    chosen = {"seed": everything["seed"], "deterministic": everything["deterministic"]}
    for section in sections:
        chosen[section] = everything[section]
    return flatten(chosen)


def _param_value(value: Any) -> str:
    return "null" if value is None else str(value)


def read_run(model_dir: Path) -> dict[str, str]:
    return fileio.read_json(Path(model_dir) / RUN_FILE)


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged model, taken from this environment (no slow inference)."""
    from importlib import metadata

    names = ["keras", "numpy", "pillow"]
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
