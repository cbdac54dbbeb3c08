"""The evaluate stage: metrics against hand counts, calibration, streaming prediction, refusals of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from imgclf import artifacts, model_io
from imgclf.config import params_from_dict
from imgclf.entry_points import PROJECT_ROOT
from imgclf.errors import EvaluationError
from imgclf.evaluation import calibration, evaluate, experiments_table
from imgclf.tracking import packaging
from imgclf.training import fitting

pytestmark = pytest.mark.duration(seconds=20)  # about, under make test: orders the modules

CLASSES = ["cat", "dog", "ship"]


def test_classification_metrics_match_hand_counts(fake_probabilities):
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3],
                              [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]])
    result = evaluate.classification_metrics(labels, probabilities, CLASSES)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.2, 0.8, 0.6, 0.8, 0.3])))
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["per_class"]["dog"] == {"precision": pytest.approx(2 / 3), "recall": 1.0,
                                          "f1": pytest.approx(0.8), "support": 2}
    assert result["macro_recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert "top5_accuracy" not in result, "top-5 is only reported with more than 5 classes"
    many = fake_probabilities(np.arange(60) % 12, num_classes=12, accuracy=0.5, seed=0)
    assert 0.5 <= evaluate.classification_metrics(np.arange(60) % 12, many, [str(i) for i in range(12)])[
        "top5_accuracy"] <= 1.0


def test_expected_calibration_error_of_known_cases():
    labels = np.array([0] * 10)
    confident_half_right = np.tile([0.9, 0.1], (10, 1))
    confident_half_right[5:] = [0.1, 0.9]  # wrong, still 0.9 sure
    assert calibration.expected_calibration_error(confident_half_right, labels, bins=15) == pytest.approx(0.4)
    right_and_sure = np.tile([1.0, 0.0], (10, 1))
    assert calibration.expected_calibration_error(right_and_sure, labels, bins=15) == pytest.approx(0.0)


def test_temperature_scaling_recovers_overconfidence_and_keeps_predictions():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(4000, 5))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in calibrated])  # labels drawn from the true probabilities
    overconfident = calibration.scale(calibrated, 1 / 3)  # logits x 3
    temperature = calibration.fit_temperature(overconfident[:2000], labels[:2000])
    assert temperature == pytest.approx(3.0, rel=0.15)
    result = evaluate.calibration_metrics(labels=labels[2000:], probabilities=overconfident[2000:],
                                          validation_labels=labels[:2000],
                                          validation_probabilities=overconfident[:2000], bins=15)
    assert result["ece_calibrated"] < result["ece"] / 2
    assert result["accuracy_calibrated"] == pytest.approx(np.mean(overconfident[2000:].argmax(1) == labels[2000:]))
    assert result["loss_calibrated"] < evaluate.classification_metrics(
        labels[2000:], overconfident[2000:], list("abcde"))["loss"]
    assert len(result["reliability"]["counts"]) == 15 and sum(result["reliability"]["counts"]) == 2000
    assert calibration.fit_temperature(overconfident[:0], labels[:0]) == 1.0


def _tiny_model(input_size: int, classes: int) -> keras.Model:
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


def test_a_model_that_does_not_fit_the_data_is_refused_with_what_to_do():
    evaluate.check_model_fits(_tiny_model(8, 3), name="scratch", image_shape=(8, 8, 3), num_classes=3)
    with pytest.raises(EvaluationError, match=r"predicts 4 classes but the prepared data has 3.*dvc repro"):
        evaluate.check_model_fits(_tiny_model(8, 4), name="scratch", image_shape=(8, 8, 3), num_classes=3)
    with pytest.raises(EvaluationError, match=r"takes images of shape \(16, 16, 3\) .* \(8, 8, 3\).*retrain"):
        evaluate.check_model_fits(_tiny_model(16, 3), name="transfer", image_shape=(8, 8, 3), num_classes=3)


def test_missing_class_in_test_split_and_non_probability_outputs_are_refused():
    with pytest.raises(EvaluationError, match=r"no images of 1 class\(es\): ship.*small_class_policy"):
        evaluate.check_test_covers_classes(np.array([0, 1, 1]), CLASSES)
    with pytest.raises(EvaluationError, match="softmax"):
        evaluate.check_probabilities(np.array([[2.0, -1.0, 0.5]]), name="scratch")


def test_predict_streams_batches_and_measures_speed():
    model = _tiny_model(8, 3)
    rng = np.random.default_rng(0)
    batches = [(rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32), np.eye(3)[np.arange(n) % 3],
                np.arange(start, start + n)) for start, n in ((0, 4), (4, 4), (8, 2))]
    result = evaluate.predict(model, iter(batches))
    assert result.ids.tolist() == list(range(10)) and result.labels.tolist() == [0, 1, 2, 0, 0, 1, 2, 0, 0, 1]
    assert result.probabilities.shape == (10, 3) and np.allclose(result.probabilities.sum(1), 1, atol=1e-5)
    assert result.images_per_second > 0


class _CountsTraces(keras.layers.Layer):
    """Identity whose Python `call` runs once per trace of the model's predict function (then graph replays)."""

    traces = 0

    def call(self, inputs):
        _CountsTraces.traces += 1
        return inputs


def test_predict_pads_short_batches_to_one_shape_and_drops_their_scores():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(_CountsTraces()(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(0)

    def batches(sizes):
        return [(rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32), np.eye(3)[np.arange(n) % 3],
                 np.arange(start, start + n)) for start, n in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True)]

    test, validation = batches([4, 4, 3]), batches([2])
    _CountsTraces.traces = 0
    padded = [evaluate.predict(model, iter(split), flip=True, batch_size=4) for split in (test, validation)]
    assert _CountsTraces.traces == 1, "one shape: traced once for the splits, their last batches and the mirror"
    unpadded = [model.predict_on_batch(images) for images, _, _ in test + validation]
    assert [len(result.ids) for result in padded] == [11, 2]
    assert padded[1].ids.tolist() == [0, 1] and padded[0].labels.tolist() == [0, 1, 2, 0, 0, 1, 2, 0, 0, 1, 2]
    plain = evaluate.predict(model, iter(test + validation))  # no padding: the same scores for the real images
    mirrored = [model.predict_on_batch(np.ascontiguousarray(images[:, :, ::-1])) for images, _, _ in test + validation]
    expected = (np.concatenate(unpadded) + np.concatenate(mirrored)) / 2
    np.testing.assert_allclose(np.concatenate([result.probabilities for result in padded]), expected, atol=1e-6)
    np.testing.assert_allclose(plain.probabilities, np.concatenate(unpadded), atol=1e-6)


def test_predictions_file_lists_top_k_that_exist(tmp_path):
    labels = np.array([0, 1, 1])
    scores = np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]], dtype=np.float32)
    predictions = evaluate.Predictions(ids=np.array([5, 6, 7]), labels=labels, probabilities=scores,
                                       images_per_second=1.0)
    path = tmp_path / "p.csv"
    evaluate.write_predictions(path, predictions, ["no", "yes"], top_k=5, originals={5: "no/a.jpg"})
    table = pd.read_csv(path, keep_default_na=False)
    assert list(table.columns[-4:]) == ["top1_class", "top1_probability", "top2_class", "top2_probability"]
    assert table["predicted_class"].tolist() == ["no", "yes", "no"]
    assert table["true_probability"].tolist() == pytest.approx([0.7, 0.6, 0.1])
    assert table["original"].tolist() == ["no/a.jpg", "", ""]


@pytest.fixture
def evaluate_project(write_prepared, tmp_path, tiny_params_dict, monkeypatch, new_mlflow_store):
    """Prepared data, two tiny models each logged in its MLflow run (as the training stages leave them), params:
    what the evaluate stage reads."""
    store = new_mlflow_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    meta = write_prepared(tmp_path / "prepared", class_names=CLASSES, per_class={"train": 2, "val": 4, "test": 6})
    mlflow.set_tracking_uri(store)
    # Artifacts in tmp_path: by default MLflow puts them in ./mlruns of the directory pytest runs in.
    experiment = mlflow.create_experiment("evaluate-test", artifact_location=(tmp_path / "mlruns").as_uri())
    for name, classes in (("scratch", 3), ("transfer", 3)):
        model_io.save_model(_tiny_model(8, classes), tmp_path / name / artifacts.MODEL_FILE)
        with mlflow.start_run(experiment_id=experiment, tags={"model": name}) as run:
            packaging.log_model(tmp_path / name / artifacts.MODEL_FILE, artifacts.PreparedMeta.from_dict(meta),
                              np.zeros((8, 8, 3), np.uint8))
        (tmp_path / name / "run.json").write_text(json.dumps({"run_id": run.info.run_id}))
    tiny_params_dict["mlflow"]["experiment"] = "evaluate-test"
    return tmp_path, params_from_dict(tiny_params_dict)


def test_evaluate_run_writes_scalar_dvc_metrics_details_and_logs_to_mlflow(evaluate_project, exp_show_form):
    root, params = evaluate_project
    out = root / "evaluate"
    evaluate.run(params, prepared_dir=root / "prepared", model_dirs={m: root / m for m in ("scratch", "transfer")},
                 out_dir=out, project_root=root)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"scratch", "transfer"}
    for values in metrics.values():
        assert all(isinstance(value, (int, float)) for value in values.values()), "DVC metrics: scalars only"
        assert {"accuracy", "loss", "macro_f1", "weighted_f1", "ece", "ece_calibrated", "temperature",
                "images_per_second", "model_size_mb", "parameter_count"} <= set(values)
        assert values["test_images"] == 18
    # `make exp-show` (Makefile) shows no metric of this file but the two test accuracies
    assert {key for key in experiments_table.flatten(metrics) if exp_show_form.keeps(key)} == {"scratch.accuracy",
                                                                                   "transfer.accuracy"}
    details = json.loads((out / "details.json").read_text())
    assert set(details["scratch"]["per_class"]) == set(CLASSES)
    for name in ("scratch_predictions.csv", "transfer_probabilities.npz", "scratch_confusion.png",
                 "transfer_confusion.csv", "scratch_per_class.csv", "reliability.png", "runs.json"):
        assert (out / name).stat().st_size > 0, name
    assert len(pd.read_csv(out / "transfer_predictions.csv")) == 18
    client = mlflow.MlflowClient()
    runs = json.loads((out / "runs.json").read_text())
    scratch = client.get_run(runs["scratch"])
    assert scratch.data.metrics["test_ece"] == pytest.approx(metrics["scratch"]["ece"])
    assert scratch.data.tags["mlflow.parentRunId"] == runs["comparison"]
    assert {a.path for a in client.list_artifacts(runs["scratch"], "evaluation")} >= {
        "evaluation/scratch_predictions.csv", "evaluation/reliability.png"}


def test_a_model_trained_with_another_store_gets_a_run_with_its_curves_under_the_training_names(evaluate_project):
    """A model fetched with `dvc pull` names a run this store lacks: its history.csv is recorded in a new run, with
    the names the training stages log (`train_accuracy`, not Keras's `accuracy`)."""
    root, params = evaluate_project
    (root / "scratch" / "run.json").write_text(json.dumps({"run_id": "0" * 32}))  # another machine's run
    fitting.write_history(root / "scratch" / artifacts.HISTORY_FILE, [
        {"epoch": epoch, "accuracy": 0.5 + epoch / 10, "loss": 1.0 / epoch, "val_accuracy": 0.5, "val_loss": 0.9,
         "learning_rate": 0.001} for epoch in (1, 2)])
    evaluate.run(params, prepared_dir=root / "prepared", model_dirs={m: root / m for m in ("scratch", "transfer")},
                 out_dir=root / "evaluate", project_root=root)
    run_id = json.loads((root / "evaluate" / "runs.json").read_text())["scratch"]
    client = mlflow.MlflowClient()
    recorded = client.get_run(run_id)
    assert recorded.data.tags["imgclf.recorded_run_id"] == "0" * 32
    assert [metric.value for metric in client.get_metric_history(run_id, "train_accuracy")] == pytest.approx([0.6, 0.7])
    assert not {"accuracy", "loss"} & set(recorded.data.metrics)
    assert next(iter(recorded.data.metrics)) == "val_accuracy"


@pytest.mark.integration
def test_evaluate_stage_refuses_a_model_for_other_classes_in_one_line(evaluate_project):
    root, _ = evaluate_project
    model_io.save_model(_tiny_model(8, 5), root / "transfer" / artifacts.MODEL_FILE)
    (root / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    (root / "evaluate").mkdir()
    (root / "evaluate" / "metrics.json").write_text("{}")  # an earlier run's results
    result = subprocess.run([sys.executable, "-m", "stages.evaluate", "--params", str(root / "params.yaml"),
                             "--data", str(root / "prepared"), "--scratch", str(root / "scratch"),
                             "--transfer", str(root / "transfer"), "--out", str(root / "evaluate")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    assert "the transfer model predicts 5 classes but the prepared data has 3" in result.stderr
    assert "Traceback" not in result.stderr
    # the scratch model's files were written before the refusal: staged, they never reached the earlier results
    assert [path.name for path in (root / "evaluate").iterdir()] == ["metrics.json"]
    assert not [path.name for path in root.iterdir() if path.name.startswith(".evaluate")]


def test_a_model_predicting_one_class_for_almost_every_image_is_degenerate():
    labels = np.repeat([0, 1, 2], 20)
    predicted = np.where(np.arange(60) < 57, 1, labels)  # 'dog' for 95% of the images, a third of which are dogs
    reasons = evaluate.degenerate_reasons(labels, predicted, CLASSES)
    assert any("predicts 'dog' for 95% of the test images (33% of them are)" in reason for reason in reasons)
    # A data set that really is 95% dogs, predicted right, is not degenerate for predicting dogs.
    skewed = np.where(np.arange(60) < 57, 1, 0)
    assert evaluate.degenerate_reasons(skewed, skewed, CLASSES) == []


def test_accuracy_at_chance_or_at_the_majority_class_baseline_is_degenerate():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 100)
    guessing = rng.integers(0, 3, size=300)
    assert any(reason.startswith("is at chance") for reason in evaluate.degenerate_reasons(labels, guessing, CLASSES))
    # 70% of the images are cats: 73% accuracy is no better than always saying 'cat', though far above 1/3.
    skewed = np.repeat([0, 1, 2], [210, 45, 45])
    predicted = skewed.copy()
    predicted[:80] = 1  # 80 cats taken for dogs: 73.3% right
    assert any("always the majority class 70.0%" in reason
               for reason in evaluate.degenerate_reasons(skewed, predicted, CLASSES))
    good = np.where(rng.random(300) < 0.9, labels, (labels + 1) % 3)
    assert evaluate.degenerate_reasons(labels, good, CLASSES) == []


def test_validation_accuracy_far_below_training_accuracy_is_degenerate():
    labels = np.repeat([0, 1, 2], 30)
    right = labels.copy()
    # Validation 3 points above chance (1/3) on 200 images while training reached 93%: collapse.
    assert evaluate.degenerate_reasons(labels, right, CLASSES, training_accuracy=0.93, validation_accuracy=0.36,
                                       validation_images=200) == [
        "ends training at 93.0% training accuracy but 36.0% validation accuracy"]
    assert evaluate.degenerate_reasons(labels, right, CLASSES, training_accuracy=0.93, validation_accuracy=0.8,
                                       validation_images=50) == []
    # 40% on 50 images could be 54%: too few images to call it collapse rather than overfitting.
    assert evaluate.degenerate_reasons(labels, right, CLASSES, training_accuracy=0.93, validation_accuracy=0.4,
                                       validation_images=50) == []


def test_overfitting_well_above_chance_is_an_answer_not_a_degenerate_model():
    # bench/own_photos.py (4 classes x 150 photos, seed CNN, 25 epochs): 97.5% training, 60.4% on 48 validation
    # images, 77.5% test. The gap is large, but validation keeps most of training's gain over chance (25%).
    labels = np.repeat([0, 1, 2, 3], 30)
    four = ["a", "b", "c", "d"]
    assert evaluate.degenerate_reasons(labels, labels, four, training_accuracy=0.975, validation_accuracy=0.604,
                                       validation_images=48) == []
    # The README's own-photos recipe on 10 CIFAR classes x 150 photos (photos 0000-0149 of each class of the shared
    # archive): 87.9% training, 37.5% on 120 validation images, 43.7% test with chance at 10%. Validation keeps a
    # third of training's gain (47% at the top of its noise band): overfitting, the answer the comparison gives.
    ten = [str(index) for index in range(10)]
    assert evaluate.degenerate_reasons(np.repeat(np.arange(10), 30), np.repeat(np.arange(10), 30), ten,
                                       training_accuracy=0.879, validation_accuracy=0.375,
                                       validation_images=120) == []
    # The same gap measured on many validation images, near chance, is collapse.
    assert evaluate.degenerate_reasons(labels, labels, four, training_accuracy=0.975, validation_accuracy=0.3,
                                       validation_images=480) != []


def test_evaluate_flags_a_collapsed_model_in_metrics_and_names_the_causes(evaluate_project, write_prepared, caplog):
    root, params = evaluate_project
    # 120 validation images: enough that 33% (chance) at the end of training is evidence of collapse (on the
    # fixture's 12 the noise band reaches 60%, and the train/validation gap alone proves nothing).
    prepared = root / "prepared-more-validation"
    write_prepared(prepared, class_names=CLASSES, per_class={"train": 2, "val": 40, "test": 6})
    collapsed = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                                  keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros",
                                                     bias_initializer=keras.initializers.Constant([0.0, 5.0, 0.0]))])
    model_io.save_model(collapsed, root / "scratch" / artifacts.MODEL_FILE)
    (root / "scratch" / artifacts.HISTORY_FILE).write_text("epoch,accuracy,val_accuracy\n1,0.6,0.4\n2,0.93,0.33\n")
    out = root / "evaluate"
    with caplog.at_level("WARNING", logger="imgclf.evaluation.evaluate"):
        evaluate.run(params, prepared_dir=prepared, model_dirs={m: root / m for m in ("scratch", "transfer")},
                     out_dir=out, project_root=root)
    assert json.loads((out / "metrics.json").read_text())["scratch"]["degenerate"] == 1
    flagged = json.loads((out / artifacts.DEGENERATE_FILE).read_text())["scratch"]
    assert flagged["degenerate"] is True and len(flagged["reasons"]) == 3, flagged
    assert any("the scratch model is degenerate" in record.message and "BatchNorm" in record.message
               for record in caplog.records)
