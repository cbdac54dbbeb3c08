"""Scale-out: a real MLflow tracking server (database backend + artifact store) receives a training stage's run.

The server is `mlflow server` with a SQLite backend store and a local artifacts destination, on 127.0.0.1 and a
free port; production swaps in PostgreSQL and S3 (docs/scale-out.md). A real DVC stage (train_scratch, 1 epoch)
runs in a copy of the trained project with MLFLOW_TRACKING_URI pointing at it. The server is always stopped.
(The same on PostgreSQL: test_postgres.py; multi_worker training on 127.0.0.1: test_distributed.py.)
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from imgclf import fileio, smoke_copy

# In the scale-out tier (`make test-scale-out`, run by CI after `make test`) with the PostgreSQL server test, whose
# team set-up this is the SQLite form of.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.scale_out]

STARTUP_SECONDS = 90


@pytest.fixture
def mlflow_server(tmp_path, free_port, running_server):
    """`mlflow server` on 127.0.0.1:<free port>; yields (url, backend database file, artifacts directory)."""
    store = tmp_path / "server"
    store.mkdir()
    database, artifacts = store / "mlflow.db", store / "artifacts"
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", f"sqlite:///{database}", "--artifacts-destination", str(artifacts),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # No server-side job runner (seven extra worker processes for GenAI jobs): tracking needs none of it.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    with running_server(command, ready_url=f"{url}/health", cwd=store, env=env, log_path=store / "server.log",
                        start_seconds=STARTUP_SECONDS):
        yield url, database, artifacts


def test_training_stage_logs_run_and_model_to_a_tracking_server(copy_trained_project, tmp_path, mlflow_server):
    url, database, artifacts = mlflow_server
    root = copy_trained_project(tmp_path / "project")
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["scratch"]["epochs"] = 1  # a params change: DVC reruns train_scratch, for one short epoch
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**smoke_copy.environment(root), "MLFLOW_TRACKING_URI": url}
    local_runs_before = _local_run_ids(root)

    result = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", "train_scratch"],
                            cwd=root, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Running stage 'train_scratch'" in result.stdout

    run_file = fileio.read_json(root / "models" / "scratch" / "run.json")
    assert run_file["tracking_uri"] == url
    client = mlflow.MlflowClient(tracking_uri=url)
    run = client.get_run(run_file["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "scratch"
    assert run.data.params["scratch.epochs"] == "1"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 1
    # The pyfunc model is logged into this run by the evaluate stage (imgclf.tracking.packaging), so that editing
    # how a model is packaged never retrains one; tests/pipeline/test_postgres.py follows it through evaluate.
    assert not client.search_logged_models([run.info.experiment_id]), "the trainer logs no model"

    # Landed in the server's stores: the run in its database, the files under its artifacts destination.
    with sqlite3.connect(database) as connection:
        stored = {row[0] for row in connection.execute("SELECT run_uuid FROM runs")}
    assert run.info.run_id in stored
    files = [path for path in artifacts.rglob("*") if path.is_file()]
    assert any(path.name == "train_summary.json" for path in files), "the run's files are in the artifact store"
    assert _local_run_ids(root) == local_runs_before, "nothing went to the project's embedded store"


def _local_run_ids(root: Path) -> set[str]:
    with sqlite3.connect(root / "mlflow.db") as connection:
        return {row[0] for row in connection.execute("SELECT run_uuid FROM runs")}
