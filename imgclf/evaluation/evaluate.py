"""Evaluate both models on the same test split, streaming: metrics, calibration, confusion, predictions.

Outputs (in the evaluate directory):
- `metrics.json`: scalar metrics per model, `{"scratch": {...}, "transfer": {...}}` (DVC metrics);
- `details.json`: everything, including per-class tables, confusion matrices and reliability bins;
- `<model>_predictions.csv`: id, file, true and predicted label, top-k classes with probabilities;
- `<model>_probabilities.npz`: every class score of every test image (for the analysis stage);
- `<model>_per_class.csv`, `<model>_confusion.csv` (DVC `confusion` plot data), `<model>_confusion.png`;
- `degenerate.json`: per model, whether it is degenerate (one class for almost every image, at chance, or
  validation accuracy far below training accuracy) and why; `metrics.json` carries the flag (`degenerate`);
- `reliability.png`: reliability diagrams of both models before and after temperature scaling;
- `runs.json`: the MLflow run ids (both training runs, the comparison run and the group) for the analysis
  stage, and the registered model versions (`registry`: name, version, whether it is new, `champion`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
from sklearn import metrics as sk_metrics

from imgclf import artifacts, figures, fileio, model_io, progress, workspace
from imgclf.artifacts import (
    DEGENERATE_FILE,
    DETAILS_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_NAMES,
    RELIABILITY_FILE,
    RUNS_FILE,
    SUMMARY_FILE,
    PreparedMeta,
    confusion_file,
    confusion_plot,
    per_class_file,
    predictions_file,
    probabilities_file,
    validation_predictions_file,
)
from imgclf.config import Params, whole
from imgclf.data import tfdata
from imgclf.errors import EvaluationError
from imgclf.evaluation import calibration, promotion
from imgclf.tracking import datasets, packaging, recovery, registry, runs, store

log = logging.getLogger(__name__)

TOP_K_ACCURACY = 5  # top-5 accuracy is reported when there are more than this many classes
# A degenerate model (its numbers say nothing about scratch vs transfer):
ONE_CLASS_SHARE = 0.9  # predicts one class for at least this share of test images, 0.1 more than its true share
CHANCE_STANDARD_ERRORS = 2.0  # accuracy within this many standard errors of the best trivial baseline
TRAIN_VALIDATION_GAP = 0.3  # final training accuracy this far above the saved model's validation accuracy, and
# validation keeping less than this share of training's gain over the baseline (even at the top of its noise band).
# A quarter: collapse keeps next to nothing (30% validation against 97.5% training on 4 classes: 13%), overfitting
# on small data keeps far more, and less as there are more classes to tell apart: the README's own-photos recipe kept
# 68% on 4 classes x 150 photos, 55% on 10 x 150 (bench/results/own-photos-profile*.json). Half, as it was, sat within
# the sampling noise of that 10-class run: another 150 photos per class kept 47%, and the report called a scratch
# model at 4x chance on the test images "not meaningful".
VALIDATION_KEPT_SHARE = 0.25
LIKELY_CAUSES = ("BatchNorm inference statistics that do not match training (scratch.batch_norm_images), too few "
                 "training steps or images, a learning rate too high for the data (diverged), labels that do not "
                 "match the images, or a strongly imbalanced training set")


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One model on one split: manifest ids, true labels, class scores and the inference speed."""

    ids: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    images_per_second: float


def check_model_fits(model: keras.Model, *, name: str, image_shape: tuple[int, int, int],
                     num_classes: int) -> None:
    """Refuse a model whose input size or class count differs from the prepared data."""
    expected_input = tuple(image_shape)
    actual_input = tuple(model.input_shape[1:])
    fits = len(actual_input) == len(expected_input) and all(
        actual in (None, expected) for actual, expected in zip(actual_input, expected_input, strict=True))
    if not fits:
        raise EvaluationError(f"the {name} model takes images of shape {actual_input} but the prepared data "
                              f"is {expected_input}; retrain it on this data (dvc repro train_{name})")
    classes = model.output_shape[-1]
    if classes != num_classes:
        raise EvaluationError(f"the {name} model predicts {classes} classes but the prepared data has "
                              f"{num_classes}; retrain it on this data (dvc repro train_{name})")


def check_test_covers_classes(labels: np.ndarray, class_names: list[str]) -> None:
    """Every class needs test images: per-class recall and the confusion matrix are undefined otherwise."""
    present = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    missing = [name for name, count in zip(class_names, present, strict=True) if count == 0]
    if missing:
        raise EvaluationError(
            f"the test split has no images of {len(missing)} class(es): {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}; add test images of them (image folders: test/<class>/) or "
            "drop such classes (preprocess.small_class_policy: drop), then rerun dvc repro")


def check_probabilities(probabilities: np.ndarray, *, name: str) -> None:
    """The models end in softmax; anything else (logits, a sigmoid head) would make every metric wrong."""
    sums = probabilities.sum(axis=1)
    if len(sums) and (np.any(probabilities < -1e-6) or not np.allclose(sums, 1.0, atol=1e-2)):
        raise EvaluationError(f"the {name} model's outputs are not class probabilities (rows sum to "
                              f"{sums.min():.3g}..{sums.max():.3g}); it must end in a softmax layer: retrain it "
                              f"with this project (dvc repro train_{name})")


def predict(model: keras.Model, batches, *, flip: bool = False, description: str = "predict",
            total: int | None = None, batch_size: int | None = None) -> Predictions:
    """Stream `(images, one-hot, ids)` numpy batches through the model, keeping only the scores (a progress bar
    named `description` in a terminal, one line in logs).

    `flip` (`evaluate.tta_flip`): test-time augmentation, each image's scores averaged with those of its
    left-right mirror image (twice the inference cost; the images/s below counts both passes).

    `batch_size`: a shorter batch (a split's last) is padded to it and the padding's scores dropped, so every call
    has one shape and the model's predict function is traced once, not once per split (a trace of the transfer
    model costs 0.7-2 s of CPU; inference has no batch statistics, so padding changes no other image's scores).

    Images per second counts model time only, after the first batch (which includes tracing), so it is the
    steady-state inference speed; with a single batch that batch is used.
    """
    ids, labels, probabilities = [], [], []
    first_seconds, steady_seconds, first_count, steady_count = 0.0, 0.0, 0, 0
    with progress.step(description, total=total) as counter:
        for images, targets, index in batches:
            started = time.perf_counter()
            images = _padded(np.asarray(images), batch_size)
            scores = np.asarray(model.predict_on_batch(images), dtype=np.float32)
            if flip:
                mirrored = np.ascontiguousarray(images[:, :, ::-1])
                scores = (scores + np.asarray(model.predict_on_batch(mirrored), dtype=np.float32)) / 2
            seconds = time.perf_counter() - started
            if ids:  # the padding counts: the model ran on it (the speed is the model's, not the split's)
                steady_seconds, steady_count = steady_seconds + seconds, steady_count + len(scores)
            else:
                first_seconds, first_count = seconds, len(scores)
            scores = scores[:len(index)]
            probabilities.append(scores)
            labels.append(np.argmax(np.asarray(targets), axis=-1))
            ids.append(np.asarray(index, dtype=np.int64))
            counter.update(len(scores))
    if not ids:
        return Predictions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, model.output_shape[-1]),
                           np.float32), 0.0)
    seconds, count = (steady_seconds, steady_count) if steady_count else (first_seconds, first_count)
    return Predictions(ids=np.concatenate(ids), labels=np.concatenate(labels).astype(np.int64),
                       probabilities=np.concatenate(probabilities),
                       images_per_second=count / seconds if seconds > 0 else 0.0)


def _padded(images: np.ndarray, batch_size: int | None) -> np.ndarray:
    """`images` with zero images appended up to `batch_size` (unchanged when it is None or already that long)."""
    missing = (batch_size or 0) - len(images)
    if missing <= 0:
        return images
    return np.concatenate([images, np.zeros((missing, *images.shape[1:]), images.dtype)])


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, top-5, loss, macro/weighted P/R/F1 and the per-class table, computed with scikit-learn."""
    num_classes = len(class_names)
    predicted = probabilities.argmax(axis=1)
    everything = list(range(num_classes))
    result = {
        "accuracy": float(sk_metrics.accuracy_score(labels, predicted)),
        # float32 softmax rows sum to 1 only within ~1e-7; scikit-learn wants them exact (it clips zeros itself)
        "loss": float(sk_metrics.log_loss(labels, probabilities / probabilities.sum(axis=1, keepdims=True,
                                                                                  dtype=np.float64),
                                          labels=everything)),
    }
    if num_classes > TOP_K_ACCURACY:
        result["top5_accuracy"] = float(sk_metrics.top_k_accuracy_score(labels, probabilities, k=TOP_K_ACCURACY,
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
    result["confusion_matrix"] = sk_metrics.confusion_matrix(labels, predicted, labels=everything).tolist()
    return result


def calibration_metrics(*, labels: np.ndarray, probabilities: np.ndarray, validation_labels: np.ndarray,
                        validation_probabilities: np.ndarray, bins: int) -> dict:
    """ECE on test before and after a temperature fitted on validation, the fitted T, and the bins."""
    temperature = calibration.fit_temperature(validation_probabilities, validation_labels)
    if np.isclose(temperature, calibration.TEMPERATURE_BOUNDS, rtol=1e-3).any():
        log.warning("temperature scaling: T=%.3g is at the edge of its range; the validation split (%d images) "
                    "is too small or too easy to calibrate on", temperature, len(validation_labels))
    scaled = calibration.scale(probabilities, temperature)
    before = calibration.reliability_bins(probabilities, labels, bins=bins)
    after = calibration.reliability_bins(scaled, labels, bins=bins)
    return {
        "ece": calibration.expected_calibration_error(probabilities, labels, bins=bins),
        "ece_calibrated": calibration.expected_calibration_error(scaled, labels, bins=bins),
        "temperature": temperature,
        "loss_calibrated": calibration.negative_log_likelihood(probabilities, labels, temperature),
        "accuracy_calibrated": float(np.mean(scaled.argmax(axis=1) == labels)) if len(labels) else 0.0,
        "reliability": {
            "edges": before.edges.tolist(),
            "counts": before.counts.tolist(), "confidence": _nan_to_none(before.confidence),
            "accuracy": _nan_to_none(before.accuracy),
            "counts_calibrated": after.counts.tolist(), "confidence_calibrated": _nan_to_none(after.confidence),
            "accuracy_calibrated": _nan_to_none(after.accuracy),
        },
    }


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(value) else float(value) for value in values]


def degenerate_reasons(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], *,
                       training_accuracy: float | None = None, validation_accuracy: float | None = None,
                       validation_images: int = 0) -> list[str]:
    """Why a model's test numbers cannot be compared (empty: they can), each reason a clause after "the model".

    One class for almost every test image, accuracy no better than chance (1/classes) or the majority class
    within `CHANCE_STANDARD_ERRORS` standard errors, or a final training accuracy far above the validation
    accuracy of the saved model: the signatures of a collapsed model (issue 9: BatchNorm statistics).

    The last one separates collapse from overfitting, which is an answer, not a defect (a scratch model on a few
    hundred photos: 97% training, 60% validation, 78% test with chance at 25%). It needs a gap of
    `TRAIN_VALIDATION_GAP` and validation keeping less than `VALIDATION_KEPT_SHARE` of training's gain over the
    baseline even at the top of its noise band (`CHANCE_STANDARD_ERRORS` standard errors over `validation_images`).
    """
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    total, num_classes = len(labels), len(class_names)
    if not total:
        return []
    reasons = []
    predicted_counts = np.bincount(predicted, minlength=num_classes)
    true_counts = np.bincount(labels, minlength=num_classes)
    dominant = int(predicted_counts.argmax())
    share, true_share = predicted_counts[dominant] / total, true_counts[dominant] / total
    if share >= ONE_CLASS_SHARE and share - true_share >= 0.1:
        reasons.append(f"predicts {class_names[dominant]!r} for {100 * share:.0f}% of the test images "
                       f"({100 * true_share:.0f}% of them are)")
    accuracy = float(np.mean(labels == predicted))
    chance, majority = 1 / num_classes, true_counts.max() / total
    baseline = max(chance, majority)
    margin = CHANCE_STANDARD_ERRORS * np.sqrt(baseline * (1 - baseline) / total)
    # Capped halfway to perfect: on a few, skewed test images the margin alone would flag a perfect model.
    if accuracy <= min(baseline + margin, (1 + baseline) / 2):
        reasons.append(f"is at chance (test accuracy {100 * accuracy:.1f}%; chance {100 * chance:.1f}%, "
                       f"always the majority class {100 * majority:.1f}%, {total} test images)")
    if training_accuracy is not None and validation_accuracy is not None:
        noise = CHANCE_STANDARD_ERRORS * np.sqrt(validation_accuracy * (1 - validation_accuracy)
                                                 / max(validation_images, 1))
        kept = validation_accuracy + noise - baseline
        if (training_accuracy - validation_accuracy >= TRAIN_VALIDATION_GAP
                and kept < VALIDATION_KEPT_SHARE * (training_accuracy - baseline)):
            reasons.append(f"ends training at {100 * training_accuracy:.1f}% training accuracy but "
                           f"{100 * validation_accuracy:.1f}% validation accuracy")
    return reasons


def final_training_accuracy(model_dir: Path) -> float | None:
    """The last epoch's training accuracy from the stage's history (None without one)."""
    rows = artifacts.read_history(Path(model_dir) / HISTORY_FILE)
    return float(rows[-1]["accuracy"]) if rows and "accuracy" in rows[-1] else None


def headline(result: dict) -> dict:
    """The scalar metrics (what `dvc metrics diff` and `dvc exp show` compare)."""
    return {key: value for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def write_predictions(path: Path, predictions: Predictions, class_names: list[str], *, top_k: int,
                      originals: dict[int, str] | None = None) -> None:
    """One row per image: id, file, true and predicted class, the predicted probability, top-k classes."""
    probabilities = predictions.probabilities
    k = min(top_k, len(class_names))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["id", "original", "true_label", "true_class", "predicted_label", "predicted_class", "probability",
              "true_probability"]
    for rank in range(1, k + 1):
        header += [f"top{rank}_class", f"top{rank}_probability"]
    writer.writerow(header)
    originals = originals or {}
    for row_id, label, scores, top in zip(predictions.ids, predictions.labels, probabilities, order, strict=True):
        row = [int(row_id), originals.get(int(row_id), ""), int(label), class_names[label], int(top[0]),
               class_names[top[0]], f"{scores[top[0]]:.6f}", f"{scores[label]:.6f}"]
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


def write_per_class(path: Path, per_class: dict[str, dict]) -> None:
    table = pd.DataFrame.from_dict(per_class, orient="index").rename_axis("class").reset_index()
    fileio.atomic_write_text(path, table.to_csv(index=False, float_format="%.6f"))


def write_validation_predictions(path: Path, predictions: Predictions) -> None:
    """Ids, labels and predicted classes on the validation split: what promotion compares a later model with."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, ids=predictions.ids, labels=predictions.labels,
                        predicted=predictions.probabilities.argmax(axis=1))
    fileio.atomic_write_bytes(path, buffer.getvalue())


def write_probabilities(path: Path, predictions: Predictions) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, ids=predictions.ids, labels=predictions.labels,
                        probabilities=predictions.probabilities)
    fileio.atomic_write_bytes(path, buffer.getvalue())


def _originals(prepared_dir: Path) -> dict[int, str]:
    """Manifest id -> original file (so a user can find a misclassified photo); empty without a manifest."""
    path = Path(prepared_dir) / MANIFEST_FILE
    if not path.is_file():
        return {}
    manifest = pd.read_csv(path, usecols=["id", "original"], dtype={"original": str}, keep_default_na=False)
    return dict(zip(manifest["id"].astype(int), manifest["original"], strict=True))


def run(params: Params, *, prepared_dir: Path, model_dirs: dict[str, Path], out_dir: Path,
        project_root: Path) -> dict:
    """The evaluate stage. Every file goes to a staging directory that replaces out_dir at the end, so a failed
    or killed run leaves the previous results whole, never a mix of two runs. Alias moves are journaled until
    then (`imgclf.tracking.recovery`): a run killed in between has them undone by the next stage to start."""
    runs_file = Path(out_dir) / RUNS_FILE
    with fileio.staged_directory(out_dir) as staging:
        results, comparison_id = _evaluate(params, prepared_dir=prepared_dir, model_dirs=model_dirs,
                                           out_dir=staging, project_root=project_root, runs_file=runs_file)
    recovery.finish(project_root, comparison_id)
    return results


def _evaluate(params: Params, *, prepared_dir: Path, model_dirs: dict[str, Path], out_dir: Path,
              project_root: Path, runs_file: Path) -> tuple[dict, str]:
    """(both models' metrics, the comparison run's id: the journal of its alias moves)"""
    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    meta = artifacts.read_prepared_meta(prepared_dir)
    class_names, shape = list(meta.class_names), meta.image_shape
    if meta.counts_per_class:  # fail before loading any model
        check_test_covers_classes(np.repeat(np.arange(len(class_names)), meta.counts_per_class["test"]),
                                  class_names)
    settings = params.evaluate
    originals = _originals(prepared_dir)

    def batches(split: str):
        dataset = tfdata.make_dataset(prepared_dir, split, image_shape=shape, num_classes=len(class_names),
                                      batch_size=settings.batch_size, with_index=True)
        return tfdata.iterate_numpy(dataset)

    # One input shape for both splits and both passes (see predict), never longer than the larger split: a 30-photo
    # test set is not padded to 256 images of ResNet50 inference.
    inference_batch = min(settings.batch_size, max(meta.counts.get("test", 0), meta.counts.get("val", 0))
                          or settings.batch_size)
    all_metrics: dict[str, dict] = {}
    validations: dict[str, Predictions | None] = {}
    for name in MODEL_NAMES:
        model_path = Path(model_dirs[name]) / MODEL_FILE
        model = model_io.load_model(model_path, remedy=f"retrain it (dvc repro --force train_{name})")
        check_model_fits(model, name=name, image_shape=shape, num_classes=len(class_names))
        test = predict(model, batches("test"), flip=settings.tta_flip, description=f"evaluate {name} (test)",
                       total=meta.counts.get("test"), batch_size=inference_batch)
        check_probabilities(test.probabilities, name=name)
        check_test_covers_classes(test.labels, class_names)
        has_validation = meta.counts.get("val", 1) > 0
        validation = (predict(model, batches("val"), flip=settings.tta_flip,
                              description=f"evaluate {name} (validation)", total=meta.counts.get("val"),
                              batch_size=inference_batch)
                      if has_validation else None)
        result = classification_metrics(test.labels, test.probabilities, class_names)
        result.update(calibration_metrics(
            labels=test.labels, probabilities=test.probabilities,
            validation_labels=validation.labels if validation else np.zeros(0, np.int64),
            validation_probabilities=validation.probabilities if validation else test.probabilities[:0],
            bins=settings.calibration_bins))
        result.update({"test_images": len(test.labels), "images_per_second": test.images_per_second,
                       "parameter_count": int(model.count_params()),
                       "model_size_mb": model_path.stat().st_size / 1e6})
        keras.backend.clear_session()  # free the model before loading the next one
        del model
        validation_accuracy = (float(np.mean(validation.probabilities.argmax(axis=1) == validation.labels))
                               if validation is not None and len(validation.labels) else None)
        reasons = degenerate_reasons(test.labels, test.probabilities.argmax(axis=1), class_names,
                                     training_accuracy=final_training_accuracy(model_dirs[name]),
                                     validation_accuracy=validation_accuracy,
                                     validation_images=len(validation.labels) if validation is not None else 0)
        validations[name] = validation if validation is not None and len(validation.labels) else None
        if validations[name] is not None:
            write_validation_predictions(out_dir / validation_predictions_file(name), validations[name])
        result["degenerate"] = int(bool(reasons))
        result["degenerate_reasons"] = reasons
        if reasons:
            log.warning("the %s model is degenerate, so comparing it is not meaningful: it %s. Likely causes: %s.",
                        name, "; it ".join(reasons), LIKELY_CAUSES)

        predicted = test.probabilities.argmax(axis=1)
        write_predictions(out_dir / predictions_file(name), test, class_names, top_k=settings.top_k,
                          originals=originals)
        write_probabilities(out_dir / probabilities_file(name), test)
        write_per_class(out_dir / per_class_file(name), result["per_class"])
        write_confusion_data(out_dir / confusion_file(name), test.labels, predicted, class_names)
        figures.confusion_matrix(np.asarray(result["confusion_matrix"]), class_names, out_dir / confusion_plot(name),
                               title=f"{name}: accuracy {result['accuracy']:.3f}")
        all_metrics[name] = result
        log.info("%s: test accuracy %.4f, ECE %.3f -> %.3f (T=%.2f), %.0f images/s", name, result["accuracy"],
                 result["ece"], result["ece_calibrated"], result["temperature"], test.images_per_second)

    figures.reliability_diagrams({name: all_metrics[name] for name in MODEL_NAMES}, out_dir / RELIABILITY_FILE)
    fileio.atomic_write_json(out_dir / METRICS_FILE, {name: headline(all_metrics[name]) for name in MODEL_NAMES})
    fileio.atomic_write_json(out_dir / DETAILS_FILE, {"class_names": class_names, **all_metrics})
    fileio.atomic_write_json(out_dir / DEGENERATE_FILE, {
        name: {"degenerate": bool(all_metrics[name]["degenerate"]), "reasons": all_metrics[name]["degenerate_reasons"],
               "likely_causes": LIKELY_CAUSES if all_metrics[name]["degenerate"] else ""} for name in MODEL_NAMES})
    runs = _log_to_mlflow(params, all_metrics, model_dirs=model_dirs, out_dir=out_dir, project_root=project_root,
                          runs_file=runs_file,
                          meta=meta, example_image=lambda: next(batches("test"))[0][0], validations=validations)
    fileio.atomic_write_json(out_dir / RUNS_FILE, runs)
    return all_metrics, runs["comparison"]


def _log_to_mlflow(params: Params, all_metrics: dict[str, dict], *, model_dirs: dict[str, Path],
                   out_dir: Path, project_root: Path, runs_file: Path, meta: dict,
                   example_image: Callable[[], np.ndarray], validations: dict[str, Predictions | None]) -> dict:
    """Test metrics into each model's run; a parent comparison run groups this pipeline execution (the
    `mlflow run` run does, when there is one, with the comparison run beside the training runs); both models
    registered, and the aliases moved by the promotion policy (`promotion`). Returns the run ids and the
    registry's state after the decision (`runs.json`)."""
    store.configure(project_root, params.mlflow.experiment)
    tags = runs.run_tags(params, stage="evaluate", project_root=project_root,
                             data_sha256=meta.source_sha256)
    client = mlflow.MlflowClient()
    run_ids = {name: _training_run_id(client, params, name=name, model_dir=Path(model_dirs[name]), meta=meta,
                                      example_image=example_image, tags=tags)
               for name in MODEL_NAMES}
    with runs.start_run(run_name=runs.run_name(params, model="comparison"),
                            tags={**tags, "model": "comparison"}) as parent:
        comparison_id = parent.info.run_id
        settings = whole(params).evaluate.model_dump()  # lineage: all of them, whether read or not
        mlflow.log_params({f"evaluate.{key}": value for key, value in settings.items()})
        datasets.log_prepared_data(params, project_root=project_root, context="evaluation")
        for model_name in MODEL_NAMES:
            mlflow.log_metrics({f"{model_name}_{runs.as_test_metric(key)}": value
                                for key, value in headline(all_metrics[model_name]).items()})
            mlflow.set_tag(f"{model_name}_run_id", run_ids[model_name])
        for artifact in (METRICS_FILE, DETAILS_FILE, RELIABILITY_FILE):
            mlflow.log_artifact(str(out_dir / artifact))
        for model_name in MODEL_NAMES:  # what a later run's promotion compares with (promotion.decide)
            if validations[model_name] is not None:
                client.log_artifact(run_ids[model_name], str(out_dir / validation_predictions_file(model_name)),
                                    artifact_path="evaluation")
        with store.store_lock(mlflow.get_tracking_uri()):  # parallel queued experiments register too
            registered = _register(client, params, all_metrics, model_dirs=model_dirs, run_ids=run_ids,
                                 comparison_id=comparison_id, tags=tags, validations=validations,
                                 journal={"project_root": project_root, "runs_file": runs_file})
        mlflow.set_tags({"champion": registered["champion"] or "none", "promotion": registered["decision"]["alias"],
                         **{f"registry.{name}": f"{entry['name']}/{entry['version']}"
                            for name, entry in registered["models"].items()}})
    group = store.outer_run_id() or comparison_id
    for model_name, run_id in run_ids.items():
        # A training run made in this execution joins its group; one DVC reused from an earlier execution
        # stays in that one's group (a run has one parent), linked from here by the `<model>_run_id` tag.
        if "mlflow.parentRunId" not in client.get_run(run_id).data.tags:
            client.set_tag(run_id, "mlflow.parentRunId", group)
        for key, value in headline(all_metrics[model_name]).items():
            client.log_metric(run_id, runs.as_test_metric(key), value)
        for artifact in (confusion_plot(model_name), predictions_file(model_name),
                         per_class_file(model_name), RELIABILITY_FILE):
            client.log_artifact(run_id, str(out_dir / artifact), artifact_path="evaluation")
    return {"comparison": comparison_id, **run_ids, "group": group, "registry": registered}


def _training_run_id(client: mlflow.MlflowClient, params: Params, *, name: str, model_dir: Path, meta: PreparedMeta,
                     example_image: Callable[[], np.ndarray], tags: dict[str, str]) -> str:
    """The MLflow run of a trained model: the one its training stage recorded (`run.json`) when this store has
    it. A model trained elsewhere and fetched with `dvc pull` names a run in another machine's store; its
    curves and model are then recorded in a new run here, so it can be compared, registered and served."""
    recorded = runs.read_run(model_dir)["run_id"]
    try:
        client.get_run(recorded)
    except mlflow.exceptions.MlflowException:
        pass
    else:
        # The pyfunc model is logged here, not by the trainers, so that editing how a model is packaged
        # (imgclf.tracking.packaging) reruns evaluate and never a training; once per run.
        if registry.logged_model(client, recorded) is None:
            with runs.start_run(run_id=recorded):
                packaging.log_model(model_dir / MODEL_FILE, meta, example_image())
        return recorded
    log.warning("%s: training run %s is not in %s (a model from a DVC remote, trained with another store?); "
                "recording its history and model in a new run here. Point MLFLOW_TRACKING_URI at a shared "
                "tracking server to keep one run per training.", name, recorded, mlflow.get_tracking_uri())
    with runs.start_run(run_name=runs.run_name(params, model=name),
                            tags={**tags, "stage": f"train_{name}", "model": name,
                                  "imgclf.recorded_run_id": recorded}) as run:
        for row in artifacts.read_history(model_dir / HISTORY_FILE):
            mlflow.log_metrics(runs.epoch_metrics(row), step=int(row["epoch"]))  # the names training logs
        if (model_dir / SUMMARY_FILE).is_file():
            mlflow.log_dict(fileio.read_json(model_dir / SUMMARY_FILE), SUMMARY_FILE)
        packaging.log_model(model_dir / MODEL_FILE, meta, example_image())
    return run.info.run_id


def _register(client: mlflow.MlflowClient, params: Params, all_metrics: dict[str, dict], *,
              model_dirs: dict[str, Path], run_ids: dict[str, str], comparison_id: str, tags: dict[str, str],
              journal: dict[str, Path],
              validations: dict[str, Predictions | None]) -> dict:
    """Register both models (reusing the version of an unchanged model file), then apply the promotion policy to
    this run's candidate (`promotion`): `champion` or `challenger`, with the decision as tags on its version."""
    validation_accuracy = {name: None if validations[name] is None else float(np.mean(
        validations[name].probabilities.argmax(axis=1) == validations[name].labels)) for name in MODEL_NAMES}
    versions, entries = {}, {}
    for name in MODEL_NAMES:
        metrics = all_metrics[name]
        version_tags = {"test_accuracy": f"{metrics['accuracy']:.6f}", "comparison_run_id": comparison_id,
                        **{key: tags[key] for key in ("git.commit", "dvc.experiment", datasets.PREPARED_DIGEST_TAG)
                           if key in tags}}
        if validation_accuracy[name] is not None:
            version_tags["val_accuracy"] = f"{validation_accuracy[name]:.6f}"
        version, created = registry.register(client, name=registry.REGISTERED_MODELS[name], run_id=run_ids[name],
                                             model_file=Path(model_dirs[name]) / MODEL_FILE, tags=version_tags)
        versions[name] = version
        entries[name] = {"name": version.name, "version": int(version.version), "created": created,
                         "run_id": run_ids[name], "test_accuracy": float(metrics["accuracy"]),
                         "val_accuracy": validation_accuracy[name],
                         "model_sha256": version.tags.get(registry.MODEL_SHA_TAG)}
        log.info("registry: %s version %s (%s)", version.name, version.version, "new" if created else "unchanged")

    candidate = promotion.candidate_of(validation_accuracy,
                                       {name: all_metrics[name]["parameter_count"] for name in MODEL_NAMES})
    if candidate is None:
        decision = promotion.Decision("none", "no validation images (data.val_fraction is 0): the registry's "
                                      "aliases are left as they are, since the test split never decides promotion")
    else:
        decision = _promotion(client, params, candidate=versions[candidate], tags=tags,
                              candidate_right=validations[candidate].probabilities.argmax(axis=1)
                              == validations[candidate].labels, candidate_ids=validations[candidate].ids)
        if decision.alias in (registry.CHAMPION, registry.CHALLENGER):
            recovery.begin(client, **journal, comparison_id=comparison_id,
                           moves={decision.alias: [versions[candidate].name, str(versions[candidate].version)]})
            registry.move_alias(client, decision.alias, versions[candidate])
        for key, value in decision.tags().items():
            client.set_model_version_tag(versions[candidate].name, versions[candidate].version, key, value)
    log.info("registry: %s", f"{versions[candidate].name} version {versions[candidate].version} (this run's better "
             f"model on validation): {decision.alias} ({decision.reason})" if candidate
             else f"nothing promoted: {decision.reason}")
    champion = registry.current_champion(client)
    return {"candidate": candidate, "decision": dataclasses.asdict(decision),
            "champion": registry.model_of(champion.name) if champion else None,
            "champion_uri": f"models:/{champion.name}@{registry.CHAMPION}" if champion else None,
            "champion_version": int(champion.version) if champion else None,
            "champion_run_id": champion.run_id if champion else None, "models": entries}


def _promotion(client: mlflow.MlflowClient, params: Params, *, candidate, tags: dict[str, str],
               candidate_right: np.ndarray, candidate_ids: np.ndarray) -> promotion.Decision:
    """Gather what `promotion.decide` needs about the current champion: its data and validation predictions."""
    champion = registry.current_champion(client)
    if champion is not None and (champion.name, champion.version) == (candidate.name, candidate.version):
        return promotion.Decision(registry.CHAMPION, "it already is the champion")
    same_data = champion is not None and tags.get(datasets.PREPARED_DIGEST_TAG) is not None and \
        champion.tags.get(datasets.PREPARED_DIGEST_TAG) == tags.get(datasets.PREPARED_DIGEST_TAG)
    champion_right = None
    if same_data:
        recorded = registry.evaluation_artifact(client, champion.run_id,
                                                validation_predictions_file(registry.model_of(champion.name)))
        if recorded is not None and np.array_equal(recorded["ids"], candidate_ids):
            champion_right = recorded["predicted"] == recorded["labels"]
    return promotion.decide(candidate_right=candidate_right, champion_right=champion_right,
                            champion=f"{champion.name} version {champion.version}" if champion else None,
                            same_data=same_data, level=params.evaluate.promotion_level,
                            queued=workspace.in_temporary_copy())
