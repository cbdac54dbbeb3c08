"""Team tracking for real: an MLflow server on PostgreSQL, with a proxied artifact store, receives the pipeline's
training and evaluate stages (params, per-epoch metrics, models, registry aliases, dataset inputs), then two queued
experiments at once (`dvc queue start --jobs 2`), one of them a two-worker `multi_worker` training, without losing a
run or meeting a locked database.

PostgreSQL is Debian's `postgresql` package (.ci/run installs it): a throwaway cluster (`initdb` in a temporary
folder, run as the `postgres` user when the tests run as root, which PostgreSQL refuses to run as) listening on
127.0.0.1 and a free port. Where the package is absent the test skips and says so, except in CI (CI=true), where
.ci/run was to install it. docs/scale-out.md gives the same server for a team.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml

from imgclf import fileio, smoke_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=115), pytest.mark.scale_out]

psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary (requirements.lock) is not installed")

STARTUP_SECONDS = 120
QUEUE_SECONDS = 900  # two evaluate+analyze experiments side by side on a busy 2-core machine
# One experiment retrains both models in two JAX workers (the chief tracks) while the other evaluates anew.
VARIANTS = {"team-workers": ("training.distribute=multi_worker", "training.workers=2"),
            "team-flip": ("evaluate.tta_flip=true",)}


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's `postgresql` package")
        pytest.skip("no PostgreSQL server (/usr/lib/postgresql/*/bin/initdb; Debian: apt-get install -y postgresql)")
    return Path(found[-1]).parent


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the package's `postgres` user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres(free_port) -> Iterator[str]:
    """A PostgreSQL cluster on 127.0.0.1:<free port> with an empty `mlflow` database; yields its URI."""
    binaries = _postgres_bin()
    # Under /tmp, not pytest's 0700 root-owned folder: the server's user must reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="imgclf-postgres-"))
    data, socket_dir, log = folder / "data", folder / "socket", folder / "server.log"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        shutil.chown(socket_dir, "postgres", "postgres")
    port = free_port()
    subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                    "-E", "UTF8", "--no-locale", "--no-sync"]),
                   check=True, capture_output=True, timeout=STARTUP_SECONDS)
    options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                                              str(log), "-w", "-t", str(STARTUP_SECONDS), "start"]),
                             capture_output=True, text=True, timeout=STARTUP_SECONDS + 30)
    try:
        assert started.returncode == 0, f"{started.stdout}{started.stderr}\n{log.read_text()[-3000:]}"
        with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=port, user="postgres",
                                                 dbname="postgres")) as connection:
            connection.autocommit = True
            connection.cursor().execute("CREATE DATABASE mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"  # libpq's form (psycopg2.connect)
    finally:
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory, free_port, running_server) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on the PostgreSQL store with a proxied artifact store; yields (url, artifacts folder)."""
    folder = tmp_path_factory.mktemp("team-server")
    artifacts = folder / "artifacts"
    port = free_port()
    # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3: name the pinned one, psycopg2.
    store = postgres.replace("postgresql://", "postgresql+psycopg2://", 1)
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
               "--artifacts-destination", str(artifacts), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    with running_server(command, ready_url=f"{url}/health", cwd=folder, env=env, log_path=folder / "server.log",
                        start_seconds=STARTUP_SECONDS):
        yield url, artifacts


def _dvc(root: Path, url: str, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
    env = {**smoke_copy.environment(root), "MLFLOW_TRACKING_URI": url}
    output = {"capture_output": True} if capture else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root, env=env, text=True,
                          check=False, timeout=QUEUE_SECONDS, **output)


def _rows(postgres: str, query: str) -> list[tuple]:
    with contextlib.closing(psycopg2.connect(postgres)) as connection, connection.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchall()


def test_pipeline_and_parallel_experiments_track_on_postgresql(copy_trained_project, tmp_path, team_server,
                                                               postgres):
    url, artifacts = team_server
    root = copy_trained_project(tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["scratch"]["epochs"], params["transfer"]["epochs"] = 2, 2  # both trainings rerun, briefly
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # 1. Training and evaluate stages against the team server.
    result = _dvc(root, url, "repro")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    ran = smoke_copy.stages_ran(result.stdout)
    assert {"train_scratch", "train_transfer", "evaluate"} <= set(ran), ran
    client = mlflow.MlflowClient(tracking_uri=url)
    for model in ("scratch", "transfer"):
        run_file = fileio.read_json(root / "models" / model / "run.json")
        assert run_file["tracking_uri"] == url
        run = client.get_run(run_file["run_id"])
        assert run.info.status == "FINISHED" and run.data.params[f"{model}.epochs"] == "2"
        assert [metric.step for metric in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
        assert run.inputs.dataset_inputs, f"{model}: the prepared data set is the run's input"
        assert client.search_logged_models([run.info.experiment_id],
                                           filter_string=f"source_run_id = '{run.info.run_id}'"), model
    registered = client.search_registered_models()
    assert registered and any(model.aliases for model in registered), "evaluate registered a model and an alias"
    # In PostgreSQL itself, and the files in the server's artifact store.
    assert _rows(postgres, "SELECT count(*) FROM runs")[0][0] >= 3
    assert _rows(postgres, "SELECT count(*) FROM registered_model_aliases")[0][0] >= 1
    assert _rows(postgres, "SELECT count(*) FROM inputs")[0][0] >= 2
    files = [path.name for path in artifacts.rglob("*") if path.is_file()]
    assert "MLmodel" in files and any(name.endswith(".keras") for name in files)

    # 2. Two experiments at once, both writing to the server: nothing lost, no locked database.
    smoke_copy.commit(root, "trained against the team server")
    before = {run.info.run_id for run in client.search_runs(
        [run.info.experiment_id], max_results=1000)}
    for name, assignments in VARIANTS.items():
        settings = [argument for assignment in assignments for argument in ("-S", assignment)]
        queued = _dvc(root, url, "exp", "run", "--queue", "--name", name, *settings)
        assert queued.returncode == 0, queued.stderr
    assert _dvc(root, url, "queue", "start", "--jobs", "2", capture=False).returncode == 0
    try:
        deadline = time.monotonic() + QUEUE_SECONDS
        while True:
            status = _dvc(root, url, "queue", "status").stdout
            if not any(state in status for state in ("Queued", "Running")):
                break
            assert time.monotonic() < deadline, f"queue still busy after {QUEUE_SECONDS} s:\n{status}"
            time.sleep(10)
    finally:
        _dvc(root, url, "queue", "stop")
    logs = "\n".join(_dvc(root, url, "queue", "logs", name).stdout for name in VARIANTS)
    assert status.count("Success") == len(VARIANTS), f"{status}\n{logs[-6000:]}"
    assert "locked" not in logs.lower(), logs[-4000:]
    new = [run for run in client.search_runs([run.info.experiment_id], max_results=1000)
           if run.info.run_id not in before]
    by_experiment = {name: [run for run in new if run.data.tags.get("dvc.experiment") == name] for name in VARIANTS}
    assert all(by_experiment.values()) and sum(map(len, by_experiment.values())) == len(new), \
        [(run.info.run_name, run.data.tags.get("dvc.experiment")) for run in new]
    assert all(run.info.status == "FINISHED" for run in new)
    # The two-worker experiment's trainings: the chief's run each, its params and every epoch's metrics.
    trained = {run.data.tags["model"]: run for run in by_experiment["team-workers"]
               if run.data.tags.get("model") in ("scratch", "transfer")}
    assert sorted(trained) == ["scratch", "transfer"], [run.data.tags for run in by_experiment["team-workers"]]
    for model, run in trained.items():
        assert run.data.params["training.distribute"] == "multi_worker", model
        assert [metric.step for metric in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2], model
