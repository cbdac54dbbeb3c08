"""`make ui` for real: `imgclf ui` serving a store the project's own helpers wrote, each page in a new headless
Chromium. MLflow 3.17's UI opens on its GenAI pages (traces, "No data") unless told otherwise; the root address,
every experiment and the address `imgclf ui` prints must open on the training runs, and the compare page must not
start on training accuracy."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import keras
import mlflow
import numpy as np
import psutil
import pytest

from imgclf import tracking_ui, workspace
from imgclf.__main__ import UI_WORKERS
from imgclf.config import load_params
from imgclf.entry_points import PROJECT_ROOT
from imgclf.tracking import runs, store
from imgclf.training import fitting, recipe

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=120), pytest.mark.browser]

RUN_NAMES = ("scratch-cnn", "transfer-mobilenet_v3_small")
TEST_ACCURACY = {"scratch-cnn": 0.65, "transfer-mobilenet_v3_small": 0.70}  # what evaluate adds to each run
SERVER_START_SECONDS = 120  # `imgclf ui`'s two server processes each import MLflow on a busy 2-core CI box
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default": where `mlflow run` without --experiment-name records


def _log_training_run(name: str, seed: int) -> str:
    """A run as a training stage leaves it: the EpochLogger's per-epoch metrics of a tiny real fit, then the test
    metrics the evaluate stage adds."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0] > 0).astype(int), 2)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    recipe.compile_model(model, load_params(PROJECT_ROOT / "params.yaml").scratch, steps_per_epoch=4,
                         jit_compile=False)
    with runs.start_run(run_name=name, tags={"model": name.split("-")[0]}) as run:
        mlflow.log_param("model", name)
        model.fit(x, y, validation_data=(x[:16], y[:16]), batch_size=16, epochs=2, verbose=0,
                  callbacks=[fitting.EpochLogger([], examples_per_epoch=len(x))])
        mlflow.log_metric(runs.as_test_metric("accuracy"), TEST_ACCURACY[name])
    return run.info.run_id


@pytest.fixture(scope="module")
def ui(tmp_path_factory, new_mlflow_store, free_port, running_server):
    """A project folder (params.yaml, mlflow.db with the experiment and two training runs) and `imgclf ui` on a
    free port in it, started as `make ui` starts it; always stopped after."""
    project = tmp_path_factory.mktemp("ui-project")
    shutil.copyfile(PROJECT_ROOT / "params.yaml", project / "params.yaml")
    uri = new_mlflow_store(project)
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", workspace.DVC_ROOT_ENV, runs.DVC_EXP_NAME_ENV):
            patch.delenv(variable, raising=False)
        experiment_id = store.configure(project, load_params(project / "params.yaml").mlflow.experiment)
        run_ids = [_log_training_run(name, seed) for seed, name in enumerate(RUN_NAMES)]
    mlflow.set_tracking_uri(previous)

    port = free_port()
    log = project / "ui.log"
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", workspace.DVC_ROOT_ENV,
                                  tracking_ui.JOB_EXECUTION_ENV)}  # `imgclf ui`'s own default, whatever the shell says
    with running_server([sys.executable, "-m", "imgclf", "ui", "--port", str(port)],
                        ready_url=f"http://127.0.0.1:{port}/health", cwd=project, env=environment, log_path=log,
                        start_seconds=SERVER_START_SECONDS) as server:
        base = f"http://127.0.0.1:{port}"
        printed = [line for line in log.read_text().splitlines() if line.startswith(base + "/#")]
        assert printed, f"imgclf ui printed no address:\n{log.read_text()[-2000:]}"
        yield {"base": base, "printed": printed[0], "experiment_id": experiment_id,
               "run_ids": run_ids, "uri": uri, "pid": server.pid}


def test_the_server_runs_two_workers_and_none_of_mlflows_genai_job_runners(ui):
    # MLflow 3's own default: four workers and seven job runners, 33-40 CPU-seconds to start on 2 cores (BENCHMARKS.md).
    lines = [" ".join(process.cmdline()) for process in psutil.Process(ui["pid"]).children(recursive=True)]
    assert sum("spawn_main" in line for line in lines) == UI_WORKERS, lines  # uvicorn's workers
    assert not [line for line in lines if "huey" in line], lines


def _open(chromium: str, url: str, profile: Path) -> str:
    """The page's DOM after the UI has fetched and drawn it, in a browser with a new profile (no stored mode)."""
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--window-size=1400,1600",
               "--virtual-time-budget=30000", "--dump-dom", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False).stdout


def _title(dom: str) -> str:
    titles = re.findall(r"<title>([^<]*)</title>", dom)
    return titles[0] if titles else ""


def _assert_training_runs(dom: str, experiment_id: str, run_names=RUN_NAMES) -> None:
    # The GenAI landing is "Overview - Experiment N" (traces, tokens, "No data"); the runs table is "Runs - ...".
    assert _title(dom) == f"Runs - Experiment {experiment_id} - MLflow", f"landed on {_title(dom)!r}"
    for name in run_names:
        assert name in dom, f"run {name} is not in the runs table"


def test_the_address_imgclf_ui_prints_opens_the_experiments_training_runs(ui, chromium, tmp_path):
    assert ui["printed"] == f"{ui['base']}/#/experiments/{ui['experiment_id']}?workflowType=machine_learning"
    _assert_training_runs(_open(chromium, ui["printed"], tmp_path / "profile"), ui["experiment_id"])


def test_the_root_address_opens_the_experiments_training_runs(ui, chromium, tmp_path):
    """What the server itself prints (`Uvicorn running on http://127.0.0.1:<port>`) and people open first."""
    _assert_training_runs(_open(chromium, ui["base"] + "/", tmp_path / "profile"), ui["experiment_id"])


@pytest.mark.parametrize("which", ["project", "default"])
def test_an_experiment_address_without_parameters_opens_its_runs(ui, chromium, tmp_path, which):
    """A link inside the UI, a bookmark: `#/experiments/<id>` alone follows the browser's mode, model training."""
    if which == "project":
        experiment_id, names = ui["experiment_id"], RUN_NAMES
    else:
        experiment_id, names = DEFAULT_EXPERIMENT_ID, ()
    dom = _open(chromium, f"{ui['base']}/#/experiments/{experiment_id}", tmp_path / "profile")
    _assert_training_runs(dom, experiment_id, names)


def test_the_compare_page_plots_validation_accuracy_first_not_training_accuracy(ui, chromium, tmp_path):
    """The parallel-coordinates plot starts on the first metric the runs logged; Keras's first is training
    accuracy (scratch 0.98 vs transfer 0.93 where test accuracy says the opposite)."""
    query = urllib.parse.urlencode({"runs": json.dumps(ui["run_ids"]),
                                    "experiments": json.dumps([ui["experiment_id"]])})
    dom = _open(chromium, f"{ui['base']}/#/compare-runs?{query}", tmp_path / "profile")
    for name in RUN_NAMES:
        assert name in dom, f"run {name} is not on the compare page"
    selector = re.search(r">Metrics:</div>(.*?)Clear All", dom, re.S)
    assert selector, "no parallel-coordinates metric selector on the compare page"
    chosen = re.findall(r'selection-item-content">([^<]+)<', selector.group(1))
    assert chosen == ["val_accuracy"], f"the parallel-coordinates plot starts on {chosen}"
    for name in ("train_accuracy", "test_accuracy"):
        assert name in dom, f"{name} is not in the compare page's metrics table"
