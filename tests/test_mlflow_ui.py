"""The MLflow UI for real: a server on the project's store, the compare-runs view in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from .test_tracking import EXPERIMENT, experiment_copy

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SERVER_START_SECONDS = 90  # the first start migrates nothing (the store exists) but imports a lot on a busy CI box


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll `url` until it answers 200; fail with the server's log when it exits or takes too long."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer {url} within {SERVER_START_SECONDS} s:\n{log.read_text()[-3000:]}")


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
def project(trained_project, tmp_path_factory) -> Path:
    return experiment_copy(trained_project, tmp_path_factory)


@pytest.fixture(scope="module")
def mlflow_server(project, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 and a free port, on the project's SQLite store; always stopped after."""
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    executable = Path(sys.executable).parent / "mlflow"
    command = [str(executable), "server", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    with log.open("w") as output:
        # Its own process group: the server forks workers, and all of them must go at teardown.
        process = subprocess.Popen(command, cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/health", process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        # The whole group: `mlflow server` also starts job consumers (huey) that outlive a killed parent.
        group = process.pid  # start_new_session: the group id is the server's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)  # whatever ignored SIGTERM
        process.wait(timeout=15)


def test_compare_view_shows_both_experiments_with_test_accuracy(project, mlflow_server, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium or chromium-browser on PATH (Debian: apt-get install -y chromium); "
                    "the MLflow UI was not opened in a browser")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    transfer_runs = client.search_runs([experiment.experiment_id], "tags.model = 'transfer'",
                                       order_by=["attributes.start_time ASC"])
    baseline, variant = transfer_runs[0], transfer_runs[1]
    assert baseline.data.params["transfer.backbone"] == "resnet50"
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
    assert "mobilenet_v2" in dom and "resnet50" in dom
    assert screenshot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the compare page rendered, not a blank"
