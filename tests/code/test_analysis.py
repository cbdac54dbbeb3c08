"""The analysis stage: paired statistics, gallery selection, bad input, and whole runs for 2 and 100 classes."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from imgclf import progress
from imgclf.config import params_from_dict
from imgclf.errors import EvaluationError
from imgclf.evaluation import analysis, evaluate, experiments_table, paired_tests

pytestmark = pytest.mark.duration(seconds=10)  # about, under make test: orders the modules

CLASSES = ["cat", "dog", "ship"]


def _predictions(labels, probabilities, ids=None):
    ids = np.arange(len(labels)) if ids is None else np.asarray(ids)
    return analysis.ModelPredictions(ids=ids, labels=np.asarray(labels), probabilities=np.asarray(probabilities),
                                     originals={})


@pytest.fixture
def table():
    # ids 0-5; scratch right on 0,1,2,4; transfer right on 0,1,3,4.
    labels = [0, 1, 2, 0, 1, 2]
    scratch = [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.1, 0.85, 0.05], [0.4, 0.45, 0.15],
               [0.05, 0.9, 0.05]]
    transfer = [[0.6, 0.2, 0.2], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1],
                [0.02, 0.95, 0.03]]
    order = [5, 4, 3, 2, 1, 0]  # the transfer file lists images in another order: compare joins by id
    return analysis.per_image_table(_predictions(labels, scratch),
                            _predictions(np.array(labels)[order], np.array(transfer)[order], ids=order),
                            class_names=CLASSES)


def test_compare_joins_by_id_and_sorts_each_image_into_the_two_by_two(table):
    assert table["outcome"].tolist() == ["both_right", "both_right", "only_scratch_right", "only_transfer_right",
                                         "both_right", "both_wrong"]
    assert table.loc[3, "predicted_class_scratch"] == "dog" and table.loc[3, "probability_transfer"] == 0.7
    assert table.loc[2, "margin_scratch"] == pytest.approx(0.1)
    assert table.loc[5, "loss_transfer"] == pytest.approx(-np.log(0.03))
    assert paired_tests.two_by_two(table["right_scratch"], table["right_transfer"]) == {
        "both_right": 3, "only_scratch_right": 1, "only_transfer_right": 1, "both_wrong": 1}


def test_prediction_files_for_different_images_or_labels_are_refused():
    scores = np.full((2, 3), 1 / 3)
    with pytest.raises(EvaluationError, match=r"different test images.*dvc repro evaluate"):
        analysis.per_image_table(_predictions([0, 1], scores), _predictions([0, 1], scores, ids=[0, 7]),
                                 class_names=CLASSES)
    with pytest.raises(EvaluationError, match="disagree on the true labels"):
        analysis.per_image_table(_predictions([0, 1], scores), _predictions([0, 2], scores), class_names=CLASSES)


def test_mcnemar_is_exact_for_small_counts_and_chi_square_for_large():
    small = paired_tests.mcnemar(only_scratch_right=2, only_transfer_right=9)
    assert small.exact and small.p_value == pytest.approx(stats.binomtest(2, 11, 0.5).pvalue)
    large = paired_tests.mcnemar(only_scratch_right=10, only_transfer_right=30)
    assert not large.exact and large.statistic == pytest.approx(19**2 / 40)
    assert large.p_value == pytest.approx(stats.chi2.sf(19**2 / 40, 1))
    assert paired_tests.mcnemar(only_scratch_right=0, only_transfer_right=0).p_value == 1.0


def test_bootstrap_interval_brackets_the_observed_difference():
    rng = np.random.default_rng(0)
    scratch_right, transfer_right = rng.random(500) < 0.7, rng.random(500) < 0.8
    summary = paired_tests.significance(scratch_right, transfer_right, resamples=1000, confidence_level=0.95, seed=1)
    interval = summary["accuracy_difference_ci"]
    assert interval["low"] < summary["accuracy_difference"] < interval["high"]
    assert 0.02 < interval["high"] - interval["low"] < 0.2
    assert summary == paired_tests.significance(scratch_right, transfer_right, resamples=1000, confidence_level=0.95,
                                         seed=1), "seeded: the same interval every run"
    same = paired_tests.accuracy_difference_interval(scratch_right, scratch_right, resamples=100,
                                                   confidence_level=0.95, seed=0)
    assert same == (0.0, 0.0)
    assert "significant" in paired_tests.verdict(summary)


def test_gallery_selections(table):
    assert analysis.top_losses(table, model="scratch", size=5)["id"].tolist() == [5, 3]  # 0.05 < 0.1 true prob
    assert analysis.most_uncertain(table, model="scratch", size=2)["id"].tolist() == [4, 2]  # margins .05, .1
    pairs = analysis.most_confused(table, model="transfer", pairs=5)
    assert pairs[["true_class", "predicted_class", "count"]].values.tolist() == [["ship", "cat", 1], ["ship", "dog", 1]]
    assert pairs["share"].tolist() == [0.5, 0.5]
    assert analysis.most_confused(table.assign(right_scratch=True), model="scratch", pairs=3).empty
    # image 5: both say dog with >= 0.9 against the label ship
    assert analysis.label_error_candidates(table, confidence=0.85)["id"].tolist() == [5]
    assert analysis.label_error_candidates(table, confidence=0.95).empty


def test_score_bar_selection_and_shown_classes(table):
    assert analysis.score_bar_selection(table, ids=[4, 1], count=3)["id"].tolist() == [4, 1]
    with pytest.raises(EvaluationError, match=r"analysis.score_bar_ids: \[99\] are not test images"):
        analysis.score_bar_selection(table, ids=[99], count=3)
    automatic = analysis.score_bar_selection(table, ids=[], count=3)["id"].tolist()
    assert automatic == [2, 3, 4], "the two disagreements (equal top loss), then the most uncertain"
    scores = {"scratch": np.linspace(0, 1, 100), "transfer": np.linspace(1, 0, 100)}
    shown = analysis.shown_classes(scores, true_label=50, limit=10)
    assert len(shown) == 10 and 50 in shown and {0, 99} <= set(shown)
    assert analysis.shown_classes({"scratch": np.ones(2), "transfer": np.ones(2)}, true_label=1, limit=10) == [0, 1]


def test_missing_or_mismatched_prediction_files_say_what_to_run(fake_probabilities, write_evaluation, tmp_path):
    with pytest.raises(EvaluationError, match=r"scratch_predictions.csv not found.*dvc repro evaluate"):
        analysis.load_predictions(tmp_path, "scratch", num_classes=3)
    labels = np.array([0, 1, 2, 0])
    write_evaluation(tmp_path, ids=np.arange(4), labels=labels, class_names=CLASSES,
                     probabilities={"scratch": fake_probabilities(labels, num_classes=3, accuracy=1, seed=0)})
    assert analysis.load_predictions(tmp_path, "scratch", num_classes=3).probabilities.shape == (4, 3)
    with pytest.raises(EvaluationError, match=r"scores for 3 classes but the prepared data has 10.*rerun"):
        analysis.load_predictions(tmp_path, "scratch", num_classes=10)


@pytest.mark.parametrize("num_classes", [2, 100])
def test_analysis_run_end_to_end(write_prepared, fake_probabilities, write_evaluation, tmp_path, tiny_params_dict,
                                 num_classes, monkeypatch, new_mlflow_store, exp_show_form):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_mlflow_store(tmp_path))
    class_names = [f"class {i} <{'long name ' * (i % 3)}>" for i in range(num_classes)]
    per_test = 12 if num_classes == 2 else 2
    meta = write_prepared(tmp_path / "prepared", class_names=class_names,
                          per_class={"train": 1, "val": 1, "test": per_test})
    first_test = meta["counts"]["train"] + meta["counts"]["val"]
    labels = np.repeat(np.arange(num_classes), per_test)
    ids = np.arange(first_test, first_test + len(labels))
    write_evaluation(tmp_path / "evaluate", ids=ids, labels=labels, class_names=class_names, probabilities={
        "scratch": fake_probabilities(labels, num_classes=num_classes, accuracy=0.6, seed=1),
        "transfer": fake_probabilities(labels, num_classes=num_classes, accuracy=0.8, seed=2, sharpness=6)})
    pd.DataFrame({"epoch": [1, 2, 3], "accuracy": [0.5, 0.6, 0.7], "val_accuracy": [0.5, 0.55, 0.6],
                  "loss": [1.0, 0.8, 0.6], "val_loss": [1.1, 0.9, 0.8], "phase": ["head", "head", "finetune"]}
                 ).to_csv(tmp_path / "history.csv", index=False)
    tiny_params_dict["analysis"].update(gallery_size=6, score_bar_ids=[int(ids[0])], bootstrap_resamples=200)
    # the find_duplicates stage's output: the first two test images have a twin in training (the first twice)
    twins = tmp_path / "duplicates"
    twins.mkdir()
    pd.DataFrame({"test_id": ids[[0, 0, 1]], "test_file": ["a.png", "a.png", "b.png"], "train_id": [0, 1, 1],
                  "train_file": ["c.png", "d.png", "d.png"], "similarity": [0.97, 0.95, 1.0], "exact": [0, 0, 1]}
                 ).to_csv(twins / "pairs.csv", index=False)
    (twins / "duplicates.json").write_text(json.dumps({"within_train": 3, "within_test": 0}))
    out = tmp_path / "analysis"
    summary = analysis.run(params_from_dict(tiny_params_dict), prepared_dir=tmp_path / "prepared",
                           evaluate_dir=tmp_path / "evaluate",
                           history_paths={"scratch": tmp_path / "history.csv", "transfer": tmp_path / "absent.csv"},
                           out_dir=out, project_root=tmp_path, duplicates_dir=twins)

    assert summary == json.loads((out / "summary.json").read_text())
    shown = [key for key in experiments_table.flatten(summary) if exp_show_form.keeps(key)]
    assert shown == [], "`make exp-show` shows none"
    assert sum(summary[key] for key in analysis.OUTCOMES) == summary["test_images"] == len(labels)
    assert summary["accuracy_difference"] == pytest.approx(summary["transfer_accuracy"] - summary["scratch_accuracy"])
    assert 0 <= summary["mcnemar"]["p_value"] <= 1
    for name in ("both_wrong.png", "only_transfer_right.png", "only_scratch_right.png", "scratch_top_losses.png",
                 "transfer_most_uncertain.png", "transfer_most_confused.png", "score_bars.png",
                 "training_curves.png", "per_image.csv", "most_confused.csv", "label_errors.csv", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    # a figure of the suspected label errors only when there are some
    assert (out / "label_errors.png").is_file() == (len(pd.read_csv(out / "label_errors.csv")) > 0)
    page = (out / "report.html").read_text()
    assert page.index('id="headline"') < page.index('id="metrics"') < page.index('id="galleries"')
    assert f"#{ids[0]}" in page and "&lt;long name" in page and "<long name" not in page
    assert len(page) < 3_000_000
    assert len(pd.read_csv(out / "per_image.csv")) == len(labels)
    assert len((out / "summary.md").read_text().splitlines()) < 22

    # Without the two test images that have a training twin: their own accuracies, and the comparison again.
    table = pd.read_csv(out / "per_image.csv")
    clean = table[~table["id"].isin(ids[:2])]
    assert summary["train_test_duplicates"] == 2 and summary["duplicates_within_train"] == 3
    assert summary["deduplicated"]["test_images"] == len(labels) - 2
    for model in ("scratch", "transfer"):
        assert summary["accuracy_deduplicated"][model] == pytest.approx(clean[f"right_{model}"].mean())
    assert set(summary["deduplicated"]) >= {"mcnemar", "winner_changes", "significance_changes"}
    pairs = pd.read_csv(out / "duplicates.csv")
    assert len(pairs) == 3 and pairs["similarity"].iloc[0] == 1.0 and "right_scratch" in pairs
    section = page[page.index('id="duplicates"'):page.index('id="metrics"')]
    assert "2 of" in section and section.count('alt="test image') == 2 and "identical" in section


def test_analysis_refuses_score_bar_ids_outside_the_test_split(write_prepared, fake_probabilities, write_evaluation,
                                                               tmp_path, tiny_params_dict):
    labels = np.array([0, 1, 2])
    write_prepared(tmp_path / "prepared", class_names=CLASSES, per_class={"test": 1})
    write_evaluation(tmp_path / "evaluate", ids=np.arange(3), labels=labels, class_names=CLASSES, probabilities={
        model: fake_probabilities(labels, num_classes=3, accuracy=1, seed=0) for model in evaluate.MODEL_NAMES})
    tiny_params_dict["analysis"]["score_bar_ids"] = [1234]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text("{}")  # an earlier run's results
    with pytest.raises(EvaluationError, match="1234"):
        analysis.run(params_from_dict(tiny_params_dict), prepared_dir=tmp_path / "prepared",
                     evaluate_dir=tmp_path / "evaluate", history_paths={}, out_dir=tmp_path / "out",
                     project_root=tmp_path)
    # per_image.csv was written before the refusal: staged, it never reached the earlier results
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["summary.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["evaluate", "out", "prepared"]


def test_no_label_errors_is_a_sentence_not_an_empty_figure(write_prepared, fake_probabilities, write_evaluation,
                                                           tmp_path, tiny_params_dict, monkeypatch, caplog,
                                                           new_mlflow_store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_mlflow_store(tmp_path))
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    labels = np.repeat(np.arange(3), 4)
    meta = write_prepared(tmp_path / "prepared", class_names=CLASSES, per_class={"train": 1, "val": 1, "test": 4})
    ids = np.arange(len(labels)) + meta["counts"]["train"] + meta["counts"]["val"]
    write_evaluation(tmp_path / "evaluate", ids=ids, labels=labels, class_names=CLASSES, probabilities={
        model: fake_probabilities(labels, num_classes=3, accuracy=1, seed=seed)  # never wrong: no label suspects
        for seed, model in enumerate(evaluate.MODEL_NAMES)})
    tiny_params_dict["analysis"].update(score_bar_ids=[], bootstrap_resamples=100)
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        analysis.run(params_from_dict(tiny_params_dict), prepared_dir=tmp_path / "prepared",
                     evaluate_dir=tmp_path / "evaluate", out_dir=tmp_path / "out", project_root=tmp_path,
                     history_paths={model: tmp_path / "absent.csv" for model in evaluate.MODEL_NAMES})

    section = re.search(r'<section id="label-errors">.*?</section>', (tmp_path / "out" / "report.html").read_text(),
                        re.S).group(0)
    assert "<img" not in section and "None: on no test image do both models give the same other class" in section
    assert "(none)" in section
    assert not (tmp_path / "out" / "label_errors.png").exists(), "no PNG of nothing"
    assert len(pd.read_csv(tmp_path / "out" / "label_errors.csv")) == 0
    # the report's figures count as a step: one line in logs
    lines = [record.getMessage() for record in caplog.records if record.name == progress.__name__]
    assert any(re.fullmatch(r"analysis: figures: 11 figures in [\d.]+ s \([\d.]+ figures/s\)", line)
               for line in lines), lines
