"""The model registry: the evaluate stage registers both models (`imgclf-scratch`, `imgclf-transfer`), reusing
the version of an unchanged model file, and moves the `champion` / `challenger` aliases by the promotion policy
(`imgclf.evaluation.promotion`)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from imgclf import fileio
from imgclf.artifacts import CHALLENGER, CHAMPION, MODEL_NAMES  # noqa: F401 (the aliases the registry moves; evaluate reads both here)
from imgclf.errors import RegistryError
from imgclf.tracking.store import is_store_failure, store_errors

REGISTERED_MODELS = {model: f"imgclf-{model}" for model in MODEL_NAMES}  # imgclf-scratch, imgclf-transfer


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


def logged_model(client: mlflow.MlflowClient, run_id: str):
    """The newest model a training run has logged under LOGGED_MODEL_NAME, or None (MLflow 3 keeps logged models
    beside, not inside, the run's artifacts)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{LOGGED_MODEL_NAME}'")
    return max(models, key=lambda model: model.creation_timestamp, default=None)


def logged_model_uri(client: mlflow.MlflowClient, run_id: str) -> str:
    """`models:/<model id>` of the model a training run logged (registering `runs:/<id>/model` works but warns each
    time); `runs:/<id>/model` when none is found, so the registry's own error says what is missing."""
    newest = logged_model(client, run_id)
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
                            f"The evaluate stage logs each training run's model under the name "
                            f"{LOGGED_MODEL_NAME!r} first; rerun the training stage (dvc repro --force "
                            "train_<model>) if its run was deleted") from error
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
            if is_store_failure(error):
                raise
    return None


def move_alias(client: mlflow.MlflowClient, alias: str, version) -> None:
    """`alias` on `version`, and off every other registered model: `models:/<name>@<alias>` resolves for exactly
    one of them."""
    client.set_registered_model_alias(version.name, alias, version.version)
    remove_alias(client, alias, keep=version.name)


def remove_alias(client: mlflow.MlflowClient, alias: str, *, keep: str | None = None) -> None:
    """`alias` off every registered model but `keep`."""
    for name in REGISTERED_MODELS.values():
        if name != keep:
            with contextlib.suppress(mlflow.exceptions.MlflowException):  # absent: nothing to remove
                client.delete_registered_model_alias(name, alias)


def evaluation_artifact(client: mlflow.MlflowClient, run_id: str, file_name: str) -> dict | None:
    """The arrays of `evaluation/<file_name>` (an .npz the evaluate stage logged to the run), or None when the run
    has none (evaluated by an older version, or its artifacts were removed)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, f"evaluation/{file_name}", folder)
        except (mlflow.exceptions.MlflowException, OSError) as error:
            if is_store_failure(error):
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
                if is_store_failure(error):
                    raise
    raise RegistryError(f"no registered model has the alias {CHAMPION!r} in {mlflow.get_tracking_uri()}: run the "
                        "pipeline through the evaluate stage first (dvc repro), or pass a model path or URI")
