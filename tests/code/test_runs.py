"""Runs of one `mlflow run` stay in its group, however many runs a stage opens and closes."""

from __future__ import annotations

import mlflow

from imgclf.tracking import runs, store


def test_reopening_a_run_keeps_the_next_run_in_the_mlflow_run_group(tmp_path, monkeypatch):
    # evaluate reopens a training run to log its model, then opens the comparison run: mlflow.end_run() unsets
    # MLFLOW_RUN_ID, and the comparison run once left the group that way.
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.set_experiment("group").experiment_id
    client = mlflow.MlflowClient()
    outer = client.create_run(experiment).info.run_id
    training = client.create_run(experiment).info.run_id
    client.set_terminated(training)
    monkeypatch.setenv(store.OUTER_RUN_ENV, outer)
    with runs.start_run(run_id=training):
        pass
    assert store.outer_run_id() == outer
    with runs.start_run(run_name="comparison") as comparison:
        pass
    assert client.get_run(comparison.info.run_id).data.tags["mlflow.parentRunId"] == outer
    assert store.outer_run_id() == outer
