"""Evaluate both models on the same test split, streaming: metrics, confusion matrices, predictions.

Outputs (in the evaluate directory): `metrics.json` (DVC metrics, `{"scratch": {...}, "transfer": {...}}`),
`<model>_predictions.csv` (id, true and predicted label, top-k with probabilities),
`<model>_probabilities.npz` (every class score, for the score-bar plots), `<model>_confusion.csv`
(DVC `confusion` plot data) and `<model>_confusion.png`.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
from sklearn import metrics as sk_metrics

from imgclf import fileio, models, plots, tracking, train
from imgclf.config import Params
from imgclf.errors import EvaluationError

log = logging.getLogger(__name__)

MODEL_NAMES = ("scratch", "transfer")
METRICS_FILE = "metrics.json"
TOP_K = 5


def check_model_fits(model: keras.Model, *, name: str, image_shape: tuple[int, int, int],
                     num_classes: int) -> None:
    """Refuse a model whose input size or class count differs from the prepared data."""
    expected_input = tuple(image_shape)
    actual_input = tuple(model.input_shape[1:])
    if actual_input != expected_input:
        raise EvaluationError(f"the {name} model takes images of shape {actual_input} but the prepared data "
                              f"is {expected_input}; retrain it on this data (dvc repro)")
    classes = model.output_shape[-1]
    if classes != num_classes:
        raise EvaluationError(f"the {name} model predicts {classes} classes but the data has {num_classes}; "
                              "retrain it on this data (dvc repro)")


def predict(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Stream the dataset through the model: (ids, true labels, probabilities, images per second)."""
    ids, labels, probabilities = [], [], []
    started = time.perf_counter()
    for images, targets, index in dataset:
        probabilities.append(np.asarray(model(images, training=False), dtype=np.float32))
        labels.append(np.argmax(np.asarray(targets), axis=-1))
        ids.append(np.asarray(index))
    seconds = time.perf_counter() - started
    count = sum(len(batch) for batch in ids)
    return (np.concatenate(ids), np.concatenate(labels), np.concatenate(probabilities),
            count / seconds if seconds > 0 else 0.0)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray,
                           class_names: list[str]) -> dict:
    """Accuracy, top-5, loss, macro/weighted P/R/F1 and the per-class table, computed with scikit-learn."""
    num_classes = len(class_names)
    predicted = probabilities.argmax(axis=1)
    everything = list(range(num_classes))
    result = {
        "accuracy": float(sk_metrics.accuracy_score(labels, predicted)),
        "loss": float(sk_metrics.log_loss(labels, np.clip(probabilities, 1e-7, 1.0), labels=everything)),
    }
    if num_classes > TOP_K:
        result["top5_accuracy"] = float(sk_metrics.top_k_accuracy_score(labels, probabilities, k=TOP_K,
                                                                        labels=everything))
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = sk_metrics.precision_recall_fscore_support(
            labels, predicted, labels=everything, average=average, zero_division=0)
        result.update({f"{average}_precision": float(precision), f"{average}_recall": float(recall),
                       f"{average}_f1": float(f1)})
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        labels, predicted, labels=everything, average=None, zero_division=0)
    result["per_class"] = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    return result


def write_predictions(path: Path, ids: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                      class_names: list[str]) -> None:
    k = min(TOP_K, len(class_names))
    order = np.argsort(-probabilities, axis=1)[:, :k]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["id", "true_label", "true_class", "predicted_label", "predicted_class", "probability"]
    for rank in range(1, k + 1):
        header += [f"top{rank}_class", f"top{rank}_probability"]
    writer.writerow(header)
    for row_id, label, scores, top in zip(ids, labels, probabilities, order, strict=True):
        row = [int(row_id), int(label), class_names[label], int(top[0]), class_names[top[0]],
               f"{scores[top[0]]:.6f}"]
        for klass in top:
            row += [class_names[klass], f"{scores[klass]:.6f}"]
        writer.writerow(row)
    fileio.atomic_write_text(path, buffer.getvalue())


def write_confusion_data(path: Path, labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> None:
    """One row per test image with `actual` and `predicted` class names: DVC's `confusion` template input."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["actual", "predicted"])
    writer.writerows((class_names[a], class_names[p]) for a, p in zip(labels, predicted, strict=True))
    fileio.atomic_write_text(path, buffer.getvalue())


def run(params: Params, *, prepared_dir: Path, model_dirs: dict[str, Path], out_dir: Path,
        project_root: Path) -> dict:
    """The evaluate stage."""
    from imgclf import tfdata

    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    meta = train.read_meta(prepared_dir)
    class_names, shape = meta["class_names"], train.image_shape(meta)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_metrics: dict[str, dict] = {}
    for name in MODEL_NAMES:
        model_path = Path(model_dirs[name]) / train.MODEL_FILE
        model = models.load_model(model_path)
        check_model_fits(model, name=name, image_shape=shape, num_classes=len(class_names))
        dataset = tfdata.make_dataset(prepared_dir, "test", image_shape=shape, num_classes=len(class_names),
                                      batch_size=params.evaluate.batch_size, with_index=True)
        ids, labels, probabilities, images_per_second = predict(model, dataset)
        result = classification_metrics(labels, probabilities, class_names)
        result.update({"test_images": len(labels), "images_per_second": images_per_second,
                       "parameter_count": int(model.count_params()),
                       "model_size_mb": model_path.stat().st_size / 1e6})
        matrix = sk_metrics.confusion_matrix(labels, probabilities.argmax(axis=1),
                                             labels=list(range(len(class_names))))
        result["confusion_matrix"] = matrix.tolist()
        write_predictions(out_dir / f"{name}_predictions.csv", ids, labels, probabilities, class_names)
        buffer = io.BytesIO()
        np.savez(buffer, ids=ids, labels=labels, probabilities=probabilities)
        fileio.atomic_write_bytes(out_dir / f"{name}_probabilities.npz", buffer.getvalue())
        write_confusion_data(out_dir / f"{name}_confusion.csv", labels, probabilities.argmax(axis=1),
                             class_names)
        plots.confusion_matrix(matrix, class_names, out_dir / f"{name}_confusion.png",
                               title=f"{name}: accuracy {result['accuracy']:.3f}")
        all_metrics[name] = result
        log.info("%s: test accuracy %.4f, %.0f images/s", name, result["accuracy"], images_per_second)

    fileio.atomic_write_json(out_dir / METRICS_FILE, {name: _headline(all_metrics[name]) for name in MODEL_NAMES})
    fileio.atomic_write_json(out_dir / "details.json", all_metrics)
    _log_to_mlflow(params, all_metrics, model_dirs=model_dirs, out_dir=out_dir, project_root=project_root,
                   data_sha256=meta.get("source_sha256"))
    return all_metrics


def _headline(result: dict) -> dict:
    """The scalar metrics (what `dvc metrics diff` and `dvc exp show` compare)."""
    return {key: value for key, value in result.items() if isinstance(value, (int, float))}


def _log_to_mlflow(params: Params, all_metrics: dict[str, dict], *, model_dirs: dict[str, Path],
                   out_dir: Path, project_root: Path, data_sha256: str | None) -> None:
    """Test metrics into each model's run; a parent comparison run groups this pipeline execution."""
    tracking.configure(project_root, params.mlflow.experiment)
    tags = tracking.run_tags(params, stage="evaluate", project_root=project_root, data_sha256=data_sha256)
    run_ids = {name: tracking.read_run(model_dirs[name])["run_id"] for name in MODEL_NAMES}
    name = "comparison" + (f"-{tags['dvc.experiment']}" if "dvc.experiment" in tags else "")
    with mlflow.start_run(run_name=name, tags={**tags, "model": "comparison"}) as parent:
        for model_name in MODEL_NAMES:
            mlflow.log_metrics({f"{model_name}_test_{key}": value
                                for key, value in _headline(all_metrics[model_name]).items()})
            mlflow.set_tag(f"{model_name}_run_id", run_ids[model_name])
        mlflow.log_artifact(str(out_dir / METRICS_FILE))
    client = mlflow.MlflowClient()
    for model_name, run_id in run_ids.items():
        client.set_tag(run_id, "mlflow.parentRunId", parent.info.run_id)
        for key, value in _headline(all_metrics[model_name]).items():
            client.log_metric(run_id, f"test_{key}", value)
        client.log_artifact(run_id, str(out_dir / f"{model_name}_confusion.png"))
        client.log_artifact(run_id, str(out_dir / f"{model_name}_predictions.csv"))
