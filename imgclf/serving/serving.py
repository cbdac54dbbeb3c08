"""Serving a trained model: where its files come from (a local `.keras` file or an MLflow model URI, `model_files`),
the classifier built from them (`load_classifier`) and its TensorFlow SavedModel export. The classifier itself and
its MLflow packaging live in `imgclf.tracking.packaging`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow

from imgclf import artifacts, fileio
from imgclf.errors import ModelSourceError
from imgclf.tracking import store
from imgclf.tracking.packaging import MODEL_ARTIFACT, PREPROCESSING_ARTIFACT, Classifier

# `runs:/...`, `models:/...`, `s3://...`: a scheme of two characters or more (so `C:/model.keras` is a path).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def is_model_uri(spec: str) -> bool:
    """Whether `--model` names an MLflow model (`runs:/`, `models:/`, `s3://`, ...) rather than a file."""
    return bool(_URI.match(spec))


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """Where a model's `.keras` file and preprocessing facts are on disk."""

    keras_file: Path
    preprocessing_file: Path


@contextlib.contextmanager
def model_files(spec: str, *, meta: Path, project_root: Path) -> Iterator[ModelFiles]:
    """The files of `spec`: a local `.keras` file (with `meta`), or an MLflow model URI whose artifacts are
    downloaded into a temporary directory that lives as long as the context."""
    if not is_model_uri(spec):
        yield ModelFiles(Path(spec), Path(meta))
        return
    with tempfile.TemporaryDirectory(prefix="imgclf-model-") as staging:
        yield _download(spec, Path(staging), project_root=project_root)


def _download(uri: str, destination: Path, *, project_root: Path) -> ModelFiles:
    tracking_uri = store.tracking_uri(project_root)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        # Opening a missing SQLite store would create an empty one here and report the model as unknown.
        raise ModelSourceError(f"no MLflow store at {tracking_uri.removeprefix('sqlite:///')}: run from the project "
                               "root or set MLFLOW_TRACKING_URI to the store that holds the model")
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    # MLflow 3.17 resolves runs:/<id>/model to the logged model (models:/m-<id>) with the global client, not
    # the URIs passed below, so the global tracking URI must name the store too.
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with store.store_errors(tracking_uri):  # locked or corrupt: its own one-line error naming the store
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination),
                                                             tracking_uri=tracking_uri, registry_uri=registry_uri))
    except mlflow.exceptions.MlflowException as error:
        raise ModelSourceError(f"cannot load the MLflow model {uri} from {tracking_uri}: {error.message.strip()}; "
                               "check the run id or the registered name and alias") from error
    try:
        flavor = mlflow.models.Model.load(str(local)).flavors["python_function"]
        artifacts = flavor["artifacts"]
        return ModelFiles(local / artifacts[MODEL_ARTIFACT]["path"], local / artifacts[PREPROCESSING_ARTIFACT]["path"])
    except (mlflow.exceptions.MlflowException, OSError, KeyError) as error:
        raise ModelSourceError(f"{uri} is not an imgclf image classifier (no {MODEL_ARTIFACT!r} and "
                               f"{PREPROCESSING_ARTIFACT!r} artifacts): it was logged by another version; retrain "
                               "it (dvc repro) or pass its .keras file with --meta") from error


def load_classifier(spec: str, *, meta: Path, project_root: Path) -> Classifier:
    """A `.keras` file (with the `meta.json` of its data) or an MLflow model URI, loaded the same way."""
    with model_files(spec, meta=meta, project_root=project_root) as files:
        return Classifier.from_files(files.keras_file, files.preprocessing_file)

SAVED_MODEL_FILE = "saved_model.pb"  # what marks a folder as a SavedModel, the only kind `--force` replaces


def check_export_target(out_dir: Path, *, force: bool) -> None:
    """Refuse, before any work, an `--out` the export cannot or must not replace: a file, the current folder or
    one holding it (`--out .`), a non-empty folder without `force`, a non-empty folder that is not an earlier
    export even with `force` (it would be deleted), and a folder nothing can be written beside."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelSourceError(f"{out_dir} is a file; give a directory for the SavedModel")
    real, here = Path(os.path.realpath(out_dir)), Path(os.path.realpath(Path.cwd()))
    if here.is_relative_to(real):
        raise ModelSourceError(f"--out {out_dir} is the current folder or holds it ({here}), which the export would "
                               "replace; give the SavedModel a folder of its own, e.g. serving/imgclf/1")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise ModelSourceError(f"{out_dir} is not empty; pass --force to replace it or choose another --out")
        if not (out_dir / SAVED_MODEL_FILE).is_file():
            raise ModelSourceError(f"{out_dir} is not an earlier export (it has no {SAVED_MODEL_FILE}), and --force "
                                   "replaces only that: it would delete the folder; choose an empty or new --out")
    fileio.check_writable_folder(real.parent, option=f"--out {out_dir}")  # the export is built beside it, then renamed


def export_saved_model(classifier: Classifier, out_dir: Path, *, force: bool = False) -> Path:
    """Write a TensorFlow SavedModel (endpoint `serve`: raw 0-255 float32 pixels at the model's input size
    in, class probabilities out) to `out_dir`, with `assets.extra/preprocessing.json` for clients.

    Built in a temporary directory beside `out_dir` and renamed into place, so `out_dir` never holds half an
    export; a non-empty `out_dir` is replaced only with `force`, and only when it is an earlier export."""
    out_dir = Path(out_dir)
    check_export_target(out_dir, force=force)
    with fileio.staged_directory(out_dir) as built:
        # model.export wants to create its directory itself
        classifier.model.export(str(built / "saved_model"), format="tf_saved_model", verbose=False)
        for item in (built / "saved_model").iterdir():
            os.replace(item, built / item.name)
        (built / "saved_model").rmdir()
        # TF Serving ignores assets.extra/; clients read the class names and resize policy there.
        fileio.atomic_write_json(built / "assets.extra" / artifacts.PREPROCESSING_FILE,
                                 classifier.preprocessing.to_dict())
    return out_dir
