"""End to end: the real dvc.yaml and stages in a temporary copy of the project, with tiny settings."""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml

from imgclf import smoke_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _runs(root):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(smoke_copy.SMOKE_OVERRIDES["mlflow"]["experiment"])
    return client, client.search_runs([experiment.experiment_id])


def test_dvc_repro_end_to_end_then_up_to_date(copy_trained_project, trained_project, tmp_path):
    # `trained_project` ran the real `dvc repro` with the smoke settings (tests/conftest.py).
    root = trained_project

    for path in ("data/raw/source.json", "data/prepared/meta.json", "data/prepared/manifest.csv",
                 "data/prepared/skipped.csv", "results/preview/augmentation_preview.png",
                 "results/preview/class_distribution.png", "data/features/train.npz",
                 "models/scratch/model.keras", "models/scratch/history.csv", "models/transfer/model.keras",
                 "models/transfer/history.csv", "results/evaluate/scratch_confusion.png",
                 "results/evaluate/transfer_predictions.csv", "results/evaluate/reliability.png",
                 "results/analysis/both_wrong.png", "results/analysis/per_image.csv",
                 "results/analysis/report.html", "results/analysis/summary.md", "data/duplicates/pairs.csv",
                 "data/duplicates/duplicates.json", "data/duplicates/exclude.json",
                 "results/analysis/duplicates.csv"):
        assert (root / path).stat().st_size > 0, path

    metrics = json.loads((root / "results/evaluate/metrics.json").read_text())
    chance = 1 / smoke_copy.SMOKE_OVERRIDES["data"]["synthetic_classes"]
    for model in ("scratch", "transfer"):
        assert 0.0 <= metrics[model]["accuracy"] <= 1.0 and metrics[model]["loss"] > 0
    assert metrics["scratch"]["accuracy"] > chance + 0.2, "the synthetic classes are learnable"
    summary = json.loads((root / "results/analysis/summary.json").read_text())
    outcomes = ("both_right", "only_scratch_right", "only_transfer_right", "both_wrong")
    assert sum(summary[key] for key in outcomes) == summary["test_images"] > 0
    assert summary["scratch_accuracy"] == pytest.approx(metrics["scratch"]["accuracy"])
    assert 0 <= summary["mcnemar"]["p_value"] <= 1 and metrics["transfer"]["ece"] >= 0
    assert 'id="headline"' in (root / "results/analysis/report.html").read_text()
    # Synthetic stripes of one class differ by a random phase (a shift) and noise: the random backbone pairs many.
    found = json.loads((root / "data/duplicates/duplicates.json").read_text())
    assert summary["train_test_duplicates"] == found["train_test_duplicates"]
    assert summary["deduplicated"]["test_images"] == summary["test_images"] - summary["train_test_duplicates"]
    assert json.loads((root / "data/duplicates/exclude.json").read_text()) == {"train_ids": []}, "policy report"

    client, runs = _runs(root)
    by_model = {run.data.tags["model"]: run for run in runs}
    assert set(by_model) == {"scratch", "transfer", "comparison"} and len(runs) == 3
    scratch = by_model["scratch"]
    epochs = smoke_copy.SMOKE_OVERRIDES["scratch"]["epochs"]
    assert len(client.get_metric_history(scratch.info.run_id, "val_accuracy")) == epochs
    assert scratch.data.params["scratch.epochs"] == str(epochs)
    assert scratch.data.metrics["test_accuracy"] == pytest.approx(metrics["scratch"]["accuracy"])
    assert scratch.data.tags["mlflow.parentRunId"] == by_model["comparison"].info.run_id
    assert client.search_logged_models([scratch.info.experiment_id]), "models are logged"
    logged = {item.path for item in client.list_artifacts(by_model["comparison"].info.run_id, "analysis")}
    assert {"analysis/report.html", "analysis/summary.md"} <= logged

    # In a copy (files, git history, DVC cache, store): the shared run is only read, by every xdist worker.
    root = copy_trained_project(tmp_path / "copy")
    again = smoke_copy.dvc(root, "repro")
    assert smoke_copy.stages_ran(again.stdout) == list(smoke_copy.ALWAYS_RUN), \
        "only the data's fingerprint is read again"
    assert len(_runs(root)[1]) == 3, "an unchanged pipeline records no new runs"

    # Under duplicates.policy report, a new threshold leaves exclude.json as it was: no training reruns.
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["duplicates"]["similarity_threshold"] = 0.97
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    ran = smoke_copy.stages_ran(smoke_copy.dvc(root, "repro").stdout)
    assert set(ran) == {*smoke_copy.ALWAYS_RUN, "check_params", "find_duplicates", "analyze"}, ran

    # A head-only change reuses the cached backbone features: only the head and what follows rerun.
    params = yaml.safe_load(params_path.read_text())
    params["transfer"]["epochs"] = 2
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    status = smoke_copy.dvc(root, "status").stdout
    assert "train_transfer" in status and "extract_features" not in status and "train_scratch" not in status
