"""`mlflow run` for real: the MLproject entry points, overrides as a DVC experiment, runs nested under its run."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest
from mlflow.projects import _project_spec

from imgclf import entry_points, smoke_copy
from imgclf.entry_points import PROJECT_ROOT

EXPERIMENT = smoke_copy.SMOKE_OVERRIDES["mlflow"]["experiment"]


def test_entry_points_cover_the_pipeline_every_stage_and_predict():
    project = _project_spec.load_project(str(PROJECT_ROOT))
    assert set(entry_points.stage_names(PROJECT_ROOT)) | {"main", "predict"} <= set(project._entry_points)
    main = project.get_entry_point("main").compute_command({"overrides": "scratch.epochs=1 x.y=2"}, None)
    assert main == "python -m imgclf.entry_points run --overrides 'scratch.epochs=1 x.y=2' --name ''"
    stage = project.get_entry_point("evaluate").compute_command({}, None)
    assert stage == "python -m imgclf.entry_points run --stage evaluate --overrides ''"
    predict = project.get_entry_point("predict").compute_command({"images": "a.png b c.jpg"}, None)
    assert predict.startswith("python -m imgclf.entry_points predict --images 'a.png b c.jpg' --model champion")
    assert project.env_type == "python_env" and project.env_config_path.endswith("python_env.yaml")


@pytest.mark.integration
def test_overrides_become_a_dvc_experiment_and_need_git(tmp_path):
    items = entry_points.parse_overrides("scratch.epochs=1 transfer.backbone=mobilenet_v2")
    command = entry_points.dvc_command(overrides=items, stage=None, name=None, git=True)
    dvc = [sys.executable, "-m", "imgclf.dvc_cli"]  # DVC's command line less its fresh-clone checkout warnings
    assert command == [*dvc, "exp", "run", "-S", "scratch.epochs=1", "-S", "transfer.backbone=mobilenet_v2"]
    assert entry_points.dvc_command(overrides=[], stage="evaluate", name=None, git=False) == [*dvc, "repro", "evaluate"]
    with pytest.raises(entry_points.PipelineError, match="git repository"):
        entry_points.dvc_command(overrides=items, stage=None, name=None, git=False)
    with pytest.raises(entry_points.PipelineError, match="not key=value"):
        entry_points.parse_overrides("scratch.epochs")
    with pytest.raises(entry_points.PipelineError, match="unknown stage"):
        entry_points.dvc_command(overrides=[], stage="train", name=None, git=True)
    # The command line says what to do, in one line, with exit status 2.
    result = subprocess.run([sys.executable, "-m", "imgclf.entry_points", "run", "--overrides", "scratch.epochs=1"],
                            cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "git repository" in result.stderr


@pytest.mark.integration
@pytest.mark.slow(seconds=60)
def test_mlflow_run_main_with_overrides_nests_the_runs(copy_trained_project, tmp_path):
    # Its own copy: the registry and results it changes are not those the tracking and UI tests read.
    root = copy_trained_project(tmp_path / "p")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    executable = str(sys.executable).removesuffix("python") + "mlflow"
    result = subprocess.run([executable, "run", ".", "-e", "main", "--env-manager", "local", "--experiment-name",
                             EXPERIMENT, "-P", "overrides=transfer.epochs=2"], cwd=root,
                            env=smoke_copy.environment(root), capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    outer = client.search_runs([experiment.experiment_id], "tags.`mlflow.project.entryPoint` = 'main'")
    assert len(outer) == 1
    group = outer[0]
    assert group.info.status == "FINISHED" and group.data.params["overrides"] == "transfer.epochs=2"
    exp_name = group.data.tags["dvc.experiment"]
    assert group.info.run_name == f"pipeline-{exp_name}" and group.data.tags["overrides"] == "transfer.epochs=2"

    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{group.info.run_id}'")
    by_model = {run.data.tags["model"]: run for run in children}
    # Only what the override changed reran (the head, evaluate): new runs, in the group, named for the experiment.
    assert set(by_model) == {"transfer", "comparison"}, [run.info.run_name for run in children]
    transfer = by_model["transfer"]
    assert transfer.data.params["transfer.epochs"] == "2" and transfer.info.run_id != group.info.run_id
    assert transfer.info.run_name.startswith("transfer-") and transfer.info.run_name.endswith(exp_name)
    assert len(client.get_metric_history(transfer.info.run_id, "val_accuracy")) == 2
    for run in children:
        assert run.data.tags["dvc.experiment"] == exp_name and run.data.tags["group_run_id"] == group.info.run_id
        assert run.info.experiment_id == experiment.experiment_id
    # The group is the comparison's parent too; the registry got the new transfer model.
    assert by_model["comparison"].data.tags["registry.transfer"].startswith("imgclf-transfer/")
    assert "test_accuracy" in transfer.data.metrics


@pytest.mark.integration
@pytest.mark.slow
def test_mlflow_run_predict_is_named_after_its_model_and_logs_the_predictions(copy_trained_project, write_image_folder,
                                                                             tmp_path):
    root = copy_trained_project(tmp_path / "p")
    images = write_image_folder(tmp_path / "images", {"a": 2, "b": 1}, size=32)
    executable = str(sys.executable).removesuffix("python") + "mlflow"
    result = subprocess.run([executable, "run", ".", "-e", "predict", "--env-manager", "local", "--experiment-name",
                             EXPERIMENT, "-P", f"images={images}", "-P", "format=json"], cwd=root,
                            env=smoke_copy.environment(root), capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.project.entryPoint` = 'predict'")
    assert run.info.run_name.startswith("predict-imgclf-") and run.info.run_name.endswith("@champion")
    assert run.data.tags["model_uri"].endswith("@champion") and run.data.tags["images"] == str(images)
    predictions = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/predictions.json"))
    assert len(predictions) == 3
