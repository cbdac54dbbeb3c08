"""Sweeps on one machine: `dvc exp run --queue` variants run in parallel by `dvc queue start -j 2` record every
run and comparison group in the project's own MLflow store, not in DVC's deleted temporary workspaces."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from imgclf import smoke_copy
from imgclf.artifacts import MLFLOW_STORE_FILE
from imgclf.evaluation.metric_definitions import format_p_value
from imgclf.tracking import store

QUEUE_SECONDS = 1500  # two experiments side by side on a busy 2-core machine
# Variants of the evaluation: the experiments rerun evaluate and analyze, side by side, on the pipeline run's
# models. Each stage of a queued experiment finds the store the same way (imgclf.tracking), and evaluate finds the
# training runs through it (one looked for in a temporary workspace's store would be missing and recorded anew,
# which the test sees). Variants that retrained a model added a minute of the suite's CPU and proved nothing more.
VARIANTS = {"sweep-flip": "evaluate.tta_flip=true", "sweep-bins": "evaluate.calibration_bins=10"}
VARIED = {"sweep-flip": ("evaluate.tta_flip", "True"), "sweep-bins": ("evaluate.calibration_bins", "10")}


def dvc_as_user(root: Path, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
    """dvc in `root` with the user's default store: no MLFLOW_TRACKING_URI, so the stages find the store
    themselves (the sandbox otherwise pins it, which would hide where a queued stage looks). `capture=False` for
    a command that leaves workers behind (`queue start`): they keep captured pipes open until they exit."""
    env = {key: value for key, value in smoke_copy.environment(root).items() if key != "MLFLOW_TRACKING_URI"}
    output = {"capture_output": True} if capture else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root, env=env, text=True,
                          check=False, timeout=300, **output)


def _queue_status(root: Path, *, seconds: float = 30.0) -> tuple[bool, str]:
    """(settled, `dvc queue status`) once no experiment is queued or running, or after `seconds`. Before it asks it
    watches the git refs where DVC files finished (`refs/exps/<baseline>/<name>`) and failed
    (`refs/exps/celery/failed`) experiments: a `dvc` process costs about a second of CPU, taken from the very
    experiments it would be polling if it ran every few seconds."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=root,
                              capture_output=True, text=True, check=False).stdout.split()
        if any("/celery/failed" in ref for ref in refs) or all(
                any(ref.endswith(f"/{name}") for ref in refs) for name in VARIANTS):
            break
        time.sleep(1)
    status = dvc_as_user(root, "queue", "status").stdout
    return not any(state in status for state in ("Queued", "Running")), status


@pytest.mark.integration
@pytest.mark.slow(seconds=120)
def test_parallel_queued_experiments_record_in_the_project_store(copy_trained_project, tmp_path):
    # A sweep after a first run, as users make one: the experiments reuse the pipeline run's cached data, features
    # and models, and rerun only the stages their params reach (evaluate, analyze), in parallel.
    root = copy_trained_project(tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    store = root / MLFLOW_STORE_FILE
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    earlier = client.search_runs([experiment.experiment_id], max_results=100)
    reused = {run.data.tags["model"]: run.info.run_id for run in earlier
              if run.data.tags.get("model") in ("scratch", "transfer")}
    assert set(reused) == {"scratch", "transfer"}
    for name, assignment in VARIANTS.items():
        queued = dvc_as_user(root, "exp", "run", "--queue", "--name", name, "-S", assignment)
        assert queued.returncode == 0, queued.stderr
    started = dvc_as_user(root, "queue", "start", "--jobs", "2", capture=False)
    assert started.returncode == 0, "dvc queue start failed"
    try:
        deadline = time.monotonic() + QUEUE_SECONDS
        while True:
            settled, status = _queue_status(root)
            if settled:
                break
            assert time.monotonic() < deadline, f"queue still busy after {QUEUE_SECONDS} s:\n{status}"
    finally:
        dvc_as_user(root, "queue", "stop")
    logs = {name: dvc_as_user(root, "queue", "logs", name).stdout for name in VARIANTS}
    assert status.count("Success") == len(VARIANTS), f"{status}\n" + "\n".join(logs.values())[-6000:]
    for name, log in logs.items():
        assert "database is locked" not in log, f"{name}:\n{log[-4000:]}"

    earlier_ids = {run.info.run_id for run in earlier}
    runs = [run for run in client.search_runs([experiment.experiment_id], max_results=100)
            if run.info.run_id not in earlier_ids]
    assert runs, "the stages recorded elsewhere (DVC's temporary workspace?)"
    assert {run.data.tags.get("dvc.experiment") for run in runs} == set(VARIANTS), "every new run is a sweep's"
    for name, (key, value) in VARIED.items():
        mine = [run for run in runs if run.data.tags.get("dvc.experiment") == name]
        # One new run: the comparison. A training run recorded again would mean evaluate missed the pipeline
        # run's training runs, i.e. looked in another store.
        assert [run.data.tags.get("model") for run in mine] == ["comparison"], (name, [r.info.run_name for r in mine])
        (comparison,) = mine
        assert comparison.info.status == "FINISHED" and comparison.data.params[key] == value, name
        assert "mcnemar_p_value" in " ".join(comparison.data.metrics), "the analyze stage's statistics"
        for model, run_id in reused.items():  # the reused models' runs, linked from each comparison
            assert comparison.data.tags.get(f"{model}_run_id") == run_id, (name, model)

    # `make compare`: the sweep in one 120-column screen, the differing param and the headline metrics.
    compare = subprocess.run([sys.executable, "-m", "imgclf.evaluation.experiments_table"], cwd=root,
                             env=smoke_copy.environment(root), capture_output=True, text=True, check=False, timeout=300)
    assert compare.returncode == 0, compare.stderr
    lines = compare.stdout.splitlines()
    assert lines[0].split()[:4] == ["experiment", "state", "evaluate.calibration_bins", "evaluate.tta_flip"], \
        compare.stdout
    assert all(len(line) <= 120 for line in lines), compare.stdout
    by_name = {line.split()[0]: line.split() for line in lines[2:] if line.split()}
    assert by_name["sweep-flip"][1:4] == ["done", "15", "true"], compare.stdout
    assert by_name["sweep-bins"][1:4] == ["done", "10", "false"], compare.stdout
    assert "McNemar p" in lines[0]


def test_small_p_values_print_in_scientific_notation():
    assert format_p_value(6e-21) == "6.0e-21"
    assert format_p_value(0.0004) == "4.0e-04"
    assert format_p_value(0.042) == "0.042"
    assert format_p_value(1.0) == "1.000"


def test_store_follows_dvc_root_and_runs_in_write_ahead_mode(tmp_path, monkeypatch):
    project, temporary_copy = tmp_path / "project", tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc"
    temporary_copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project))  # what DVC exports to a queued experiment's stages
    uri = store.tracking_uri(temporary_copy)
    assert uri == f"sqlite:///{project.resolve() / MLFLOW_STORE_FILE}"
    with store.store_lock(uri):
        assert (project / f"{MLFLOW_STORE_FILE}{store.STORE_LOCK_SUFFIX}").is_file()
    with contextlib.closing(sqlite3.connect(project / MLFLOW_STORE_FILE)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    monkeypatch.delenv("DVC_ROOT")
    assert store.tracking_uri(temporary_copy) == f"sqlite:///{temporary_copy.resolve() / MLFLOW_STORE_FILE}"
