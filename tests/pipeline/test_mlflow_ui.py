"""The MLflow UI for real: a server on the project's store, the compare-runs view in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from imgclf import smoke_copy, tracking_ui

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

EXPERIMENT = smoke_copy.SMOKE_OVERRIDES["mlflow"]["experiment"]
SERVER_START_SECONDS = 90  # the first start migrates nothing (the store exists) but imports a lot on a busy CI box


def _grid_row(dom: str, label: str) -> list[float]:
    """The numbers beside `label` in the compare page's virtualised grid: its cells are absolutely positioned
    divs, and a row's label and values share the same `top`."""
    cells = re.findall(r'<div[^>]*style="height: \d+px; left: (\d+)px; position: absolute; top: (\d+)px;[^"]*"[^>]*>'
                       r"(.*?)</div>", dom)
    rows: dict[str, list[str]] = {}
    for _, top, inner in cells:
        rows.setdefault(top, []).append(re.sub(r"<[^>]+>", "", inner).strip())
    for texts in rows.values():
        if label in texts:
            return [float(text) for text in texts if text != label]
    return []


@pytest.fixture(scope="module")
def mlflow_server(experiment_project, tmp_path_factory, free_port, running_server):
    """`mlflow server` on 127.0.0.1 and a free port, on the project's SQLite store; always stopped after."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    store = f"sqlite:///{experiment_project / 'mlflow.db'}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(command, ready_url=f"http://127.0.0.1:{port}/health", cwd=experiment_project,
                        # MLflow's GenAI job runners (seven processes) serve no page this test opens
                        env={**os.environ, "MLFLOW_TRACKING_URI": store, tracking_ui.JOB_EXECUTION_ENV: "false"},
                        log_path=log,
                        start_seconds=SERVER_START_SECONDS):
        yield f"http://127.0.0.1:{port}"


def test_compare_view_shows_both_experiments_with_test_accuracy(experiment_project, chromium, mlflow_server,
                                                                tmp_path):
    project, browser = experiment_project, chromium
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    transfer_runs = client.search_runs([experiment.experiment_id], "tags.model = 'transfer'",
                                       order_by=["attributes.start_time ASC"])
    baseline, variant = transfer_runs[0], transfer_runs[1]
    assert baseline.data.params["transfer.backbone"] == smoke_copy.SMOKE_OVERRIDES["transfer"]["backbone"]
    assert variant.data.params["transfer.backbone"] == "mobilenet_v2"

    # The route the UI's own Compare button opens (getCompareRunPageRoute in the MLflow 3 JS bundle).
    ids = [baseline.info.run_id, variant.info.run_id]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([experiment.experiment_id])})
    url = f"{mlflow_server}/#/compare-runs?{query}"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1600",
              "--virtual-time-budget=30000"]  # lets the React app fetch the runs and render before the dump
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180,
                         check=False).stdout
    screenshot = tmp_path / "compare.png"  # kept in pytest's temporary directory for a look
    subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=False)

    for run in (baseline, variant):
        assert run.info.run_name in dom, f"run {run.info.run_name} is not on the compare page"
    shown = _grid_row(dom, "test_accuracy")
    expected = [run.data.metrics["test_accuracy"] for run in (baseline, variant)]
    assert sorted(shown) == pytest.approx(sorted(expected), abs=1e-3), f"test_accuracy row shows {shown}"
    assert "transfer.backbone" in dom
    assert "mobilenet_v2" in dom and baseline.data.params["transfer.backbone"] in dom
    assert screenshot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the compare page rendered, not a blank"
