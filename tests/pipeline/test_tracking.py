"""MLflow runs people can navigate, and the model registry, on a real store after real pipeline runs.

The `experiment_project` fixture (a copy of `trained_project` with a second experiment,
`dvc exp run -S transfer.backbone=mobilenet_v2`) is what the tests here and the UI test read.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path

import mlflow
import pytest

from imgclf import fileio, smoke_copy, tracking_ui
from imgclf.tracking import registry
from imgclf.tracking import store as tracking_store

EXPERIMENT = smoke_copy.SMOKE_OVERRIDES["mlflow"]["experiment"]
SMOKE_BACKBONE = smoke_copy.SMOKE_OVERRIDES["transfer"]["backbone"]
SMOKE_TRANSFER = f"transfer-{SMOKE_BACKBONE}"  # the pipeline run's transfer run


@pytest.fixture(scope="module")
def project(experiment_project) -> Path:
    return experiment_project


@pytest.fixture(scope="module")
def store(project):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    info = fileio.read_json(project.parent / "experiment.json")
    return client, runs, info


def _by_name(runs) -> dict:
    return {run.info.run_name: run for run in runs}


@pytest.mark.integration
@pytest.mark.slow
def test_runs_are_named_tagged_and_grouped(project, store):
    client, runs, info = store
    exp_name, baseline = info["experiment"], info["baseline"]
    by_name = _by_name(runs)
    expected = {"scratch-cnn", SMOKE_TRANSFER, "comparison", f"transfer-mobilenet_v2-{exp_name}",
                f"comparison-{exp_name}"}
    assert expected <= set(by_name), sorted(by_name)

    # The pipeline run (dvc repro on a clean commit): commit, clean, stage, data checksums, flat params.
    scratch, comparison = by_name["scratch-cnn"], by_name["comparison"]
    for run, stage in ((scratch, "train_scratch"), (by_name[SMOKE_TRANSFER], "train_transfer"),
                       (comparison, "evaluate")):
        tags = run.data.tags
        assert tags["stage"] == stage and tags["git.dirty"] == "false", tags
        assert tags["git.commit"] == tags["mlflow.source.git.commit"] and len(tags["git.commit"]) == 40
        assert re.fullmatch(r"[0-9a-f]{64}", tags["data.sha256"])
        assert re.fullmatch(r"[0-9a-f]{32}", tags["data.prepared_digest"])
        assert "dvc.experiment" not in tags
    assert scratch.data.params["scratch.epochs"] == str(smoke_copy.SMOKE_OVERRIDES["scratch"]["epochs"])
    assert scratch.data.params["scratch.conv_filters"] == "[16, 32]" and scratch.data.params["seed"] == "42"
    assert by_name[SMOKE_TRANSFER].data.params["transfer.backbone"] == SMOKE_BACKBONE
    assert comparison.data.params["evaluate.top_k"] == "5"

    # The experiment: DVC_EXP_NAME reached the stages; params.yaml differs from the commit, so dirty.
    variant, variant_comparison = by_name[f"transfer-mobilenet_v2-{exp_name}"], by_name[f"comparison-{exp_name}"]
    for run in (variant, variant_comparison):
        tags = run.data.tags
        assert tags["dvc.experiment"] == exp_name and tags["dvc.baseline_rev"] == baseline
        assert tags["git.commit"] == baseline and tags["git.dirty"] == "true"
        assert "params.yaml" in tags["git.dirty_files"]
    assert variant.data.params["transfer.backbone"] == "mobilenet_v2"
    assert variant.data.tags["stage"] == "train_transfer"

    # Groups: each execution's new training runs under its comparison run; the scratch run the experiment
    # reused (DVC did not retrain it) stays in the first group and is linked from the second.
    assert scratch.data.tags["mlflow.parentRunId"] == comparison.info.run_id
    assert by_name[SMOKE_TRANSFER].data.tags["mlflow.parentRunId"] == comparison.info.run_id
    assert variant.data.tags["mlflow.parentRunId"] == variant_comparison.info.run_id
    assert variant_comparison.data.tags["scratch_run_id"] == scratch.info.run_id
    assert "mlflow.parentRunId" not in comparison.data.tags
    # Curves to compare: per-epoch history on both transfer runs, and test accuracy on each.
    epochs = smoke_copy.SMOKE_OVERRIDES["transfer"]["epochs"]
    for run in (by_name[SMOKE_TRANSFER], variant):
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == epochs
        assert 0 <= run.data.metrics["test_accuracy"] <= 1


@pytest.mark.integration
@pytest.mark.slow
def test_registry_versions_champion_and_reuse(project, store):
    client, runs, info = store
    by_name = _by_name(runs)
    variant = by_name[f"transfer-mobilenet_v2-{info['experiment']}"]
    scratch_versions = client.search_model_versions("name = 'imgclf-scratch'")
    transfer_versions = client.search_model_versions("name = 'imgclf-transfer'")
    # The experiment re-evaluated the unchanged scratch model: same file, same version, none added.
    assert len(scratch_versions) == 1, [version.version for version in scratch_versions]
    assert sorted(int(version.version) for version in transfer_versions) == [1, 2]
    newest = client.get_model_version("imgclf-transfer", "2")
    assert newest.run_id == variant.info.run_id
    assert newest.tags[registry.MODEL_SHA_TAG] == fileio.sha256_file(project / "models/transfer/model.keras")
    assert newest.tags["dvc.experiment"] == info["experiment"]

    # The promotion policy (imgclf.evaluation.promotion): the first run's better model on validation became the
    # champion; the experiment's candidate replaces it only if significantly better on the same validation images,
    # which a few smoke images cannot show. runs.json, the aliases and what serving resolves agree.
    recorded = json.loads((project / "results/evaluate/runs.json").read_text())["registry"]
    assert recorded["models"]["scratch"] == {**recorded["models"]["scratch"], "version": 1, "created": False}
    assert recorded["models"]["transfer"]["version"] == 2 and recorded["models"]["transfer"]["created"] is True
    champion = recorded["champion"]
    version = client.get_model_version_by_alias(registry.REGISTERED_MODELS[champion], registry.CHAMPION)
    assert int(version.version) == recorded["champion_version"] and version.run_id == recorded["champion_run_id"]
    assert registry.champion_uri(client) == recorded["champion_uri"]
    other = client.get_registered_model(registry.REGISTERED_MODELS["transfer" if champion == "scratch" else "scratch"])
    assert registry.CHAMPION not in other.aliases
    candidate = recorded["models"][recorded["candidate"]]
    decided = client.get_model_version(candidate["name"], str(candidate["version"]))
    assert decided.tags["promotion.decision"] == recorded["decision"]["alias"] in ("champion", "challenger")
    assert decided.tags["promotion.reason"] == recorded["decision"]["reason"]
    if recorded["decision"]["alias"] == "challenger":
        assert client.get_model_version_by_alias(candidate["name"], registry.CHALLENGER).version == decided.version
        assert "not significantly better" in recorded["decision"]["reason"]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")  # get_model_info reads the global store
    try:
        info_of_champion = mlflow.models.get_model_info(recorded["champion_uri"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert info_of_champion.signature is not None, "registered with its signature"
    assert info_of_champion.saved_input_example_info is not None, "and its input example"
    comparison = by_name[f"comparison-{info['experiment']}"]
    assert comparison.data.tags["champion"] == champion
    assert comparison.data.tags["registry.transfer"] == "imgclf-transfer/2"


@pytest.mark.integration
@pytest.mark.slow
def test_experiment_is_tagged_model_development_and_runs_show_their_data_set(project, store):
    client, runs, _ = store
    experiment = client.get_experiment(runs[0].info.experiment_id)
    assert experiment.tags[tracking_store.EXPERIMENT_KIND_TAG] == tracking_store.MODEL_DEVELOPMENT  # says what it holds
    by_name = _by_name(runs)
    expected_contexts = {"scratch-cnn": "training", SMOKE_TRANSFER: "training", "comparison": "evaluation"}
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    for name, context in expected_contexts.items():
        run = client.get_run(by_name[name].info.run_id)  # search_runs leaves inputs out
        (dataset_input,) = run.inputs.dataset_inputs
        dataset = dataset_input.dataset
        assert dataset.name == "synthetic-prepared"
        assert dataset.digest == run.data.tags["data.prepared_digest"]
        assert json.loads(dataset.source)["uri"].endswith("/data/prepared")
        assert json.loads(dataset.profile) == {f"{split}_images": count for split, count in meta["counts"].items()}
        assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == context
    for run in runs:
        doubled = [key for key in run.data.metrics if "test_test" in key]
        assert not doubled, f"{run.info.run_name}: {doubled}"
    assert "test_images" in by_name["scratch-cnn"].data.metrics


def test_ui_command_prints_the_address_of_the_experiments_training_runs(tmp_path, monkeypatch, capsys, run_cli,
                                                                          params_dict, new_mlflow_store):
    # MLflow 3.17's UI opens an experiment on its GenAI overview unless the address or the browser asks for model
    # training (tracking_ui sets the browser; test_ui_opens_on_runs opens the pages).
    uri = new_mlflow_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps(params_dict))  # JSON is YAML
    experiment_id = mlflow.MlflowClient(tracking_uri=uri).create_experiment(params_dict["mlflow"]["experiment"])

    assert run_cli("ui", "--address-only", "--port", "5055") == 0
    assert capsys.readouterr().out.strip() == (
        f"http://127.0.0.1:5055/#/experiments/{experiment_id}?workflowType=machine_learning")

    for store, message in (("absent.db", "no MLflow store at"), ("mlflow.db", "no MLflow experiment 'other'")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / store}")
        params_dict["mlflow"]["experiment"] = "other"
        (tmp_path / "params.yaml").write_text(json.dumps(params_dict))
        assert run_cli("ui", "--address-only") == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: {message}") and "run the pipeline first" in error
        assert len(error.splitlines()) == 1
    assert not (tmp_path / "absent.db").exists()
    assert run_cli("ui", "--address-only", "--port", "99999") == 2
    assert "is not a TCP port (1-65535)" in capsys.readouterr().err
    assert run_cli("ui", "--address-only", "--workers", "0") == 2
    assert "'0' is not a positive whole number" in capsys.readouterr().err


def test_ui_server_runs_without_mlflows_genai_job_runners_unless_the_user_asks():
    environment = tracking_ui.server_environment({"PATH": "/bin", tracking_ui.HOME_EXPERIMENT_ENV: "9"}, "3")
    assert environment == {"PATH": "/bin", tracking_ui.JOB_EXECUTION_ENV: "false", tracking_ui.HOME_EXPERIMENT_ENV: "3"}
    asked = tracking_ui.server_environment({tracking_ui.JOB_EXECUTION_ENV: "true"}, "3")
    assert asked[tracking_ui.JOB_EXECUTION_ENV] == "true"


def _store_contents(store: Path) -> tuple:
    """What a store holds, less the times it was made at: the schema, the migration it is at, the experiments.
    A table's clauses are compared as a set: MLflow's migrations write a table's CHECK constraints in an order that
    changes with Python's string hashing (PYTHONHASHSEED), so two stores MLflow makes differ in that order."""
    with contextlib.closing(sqlite3.connect(store)) as connection:
        schema = connection.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        return ([(kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
                 for kind, name, sql in schema],
                connection.execute("SELECT * FROM alembic_version").fetchall(),
                connection.execute("SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
                                   " ORDER BY experiment_id").fetchall())


def test_the_suites_store_copies_are_the_store_mlflow_creates(tmp_path, monkeypatch, new_mlflow_store):
    """Tests start from copies of one store MLflow made (conftest's `new_mlflow_store`, seconds of migrations
    saved each time): a copy must hold what MLflow itself creates there on first use, row for row."""
    made, copied = tmp_path / "made", tmp_path / "copied"
    made.mkdir()
    monkeypatch.chdir(made)  # MLflow puts the Default experiment's artifacts under the working directory
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{made / 'mlflow.db'}").search_experiments()
    new_mlflow_store(copied)
    expected = _store_contents(made / "mlflow.db")
    assert expected[1] and expected[2], "MLflow made no migration or no Default experiment"
    actual = _store_contents(copied / "mlflow.db")
    assert actual[:2] == expected[:2]
    assert actual[2] == [(0, "Default", str(copied.resolve() / "mlruns" / "0"), "active")]
    assert expected[2] == [(0, "Default", str(made.resolve() / "mlruns" / "0"), "active")]
