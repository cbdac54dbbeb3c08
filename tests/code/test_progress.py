"""Progress of long steps (download, extraction, decoding, evaluation, epochs): a bar with a rate and an estimate
in a terminal, one line per step in logs and CI."""

from __future__ import annotations

import http.server
import io
import logging
import re
import tarfile
import threading
import time
import zipfile

import keras
import numpy as np
import pytest

from imgclf import progress
from imgclf.data import archives, download
from imgclf.evaluation import evaluate

pytestmark = pytest.mark.duration(seconds=5)  # about, under make test: orders the modules


def batches(count: int, size: int):
    for start in range(0, count, size):
        ids = np.arange(start, min(count, start + size))
        yield np.ones((len(ids), 4), np.float32), keras.utils.to_categorical(ids % 3, 3), ids


def test_terminal_shows_a_bar_with_rate_and_estimate(monkeypatch, capsys):
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    with progress.step("features train", total=30) as counter:
        for _ in range(3):
            time.sleep(0.6)  # past tqdm's refresh interval, so the bar redraws with a rate
            counter.update(10)
    drawn = capsys.readouterr().err
    assert "features train" in drawn
    assert re.search(r"\d+/30 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ images/s\]", drawn), drawn  # elapsed<remaining, rate


def test_logs_get_one_line_per_step_and_no_bar(monkeypatch, capsys, caplog):
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        predictions = evaluate.predict(model, batches(50, 16), description="evaluate scratch (test)", total=50)
    assert len(predictions.ids) == 50
    assert "\r" not in capsys.readouterr().err, "no bar redraws in a log"
    lines = [record.getMessage() for record in caplog.records if record.name == progress.__name__]
    assert len(lines) == 1 and re.fullmatch(r"evaluate scratch \(test\): 50 images in [\d.]+ s \([\d.]+ images/s\)",
                                            lines[0]), lines


def test_keras_fit_gets_its_bar_only_in_a_terminal(monkeypatch):
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    assert progress.keras_verbose() == 1
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    assert progress.keras_verbose() == 2


class _SlowBody(http.server.BaseHTTPRequestHandler):
    """Sends BODY in three parts with a pause between them, as a slow network would: the bar redraws with a rate."""

    BODY = bytes(range(256)) * 12  # 3 kB

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        third = len(self.BODY) // 3
        for start in range(0, len(self.BODY), third):
            self.wfile.write(self.BODY[start:start + third])
            self.wfile.flush()
            time.sleep(0.6)  # past tqdm's refresh interval

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_url(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # a proxy from the environment must not see local requests
    monkeypatch.setenv("NO_PROXY", "*")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowBody)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/cifar.tar.gz"
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_shows_bytes_with_rate_and_estimate(slow_url, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setattr(download, "_DOWNLOAD_CHUNK", 1024)  # read as the parts arrive, not all at the end
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    download.download(slow_url, tmp_path / "cifar.tar.gz", sha256=None)
    drawn = capsys.readouterr().err
    # tqdm's scaled bytes: 1.00k/3.00k [00:00<00:01, 1.66kB/s], the estimate once the first part is in
    assert re.search(r"download cifar\.tar\.gz: .*[\d.]+k?/3\.00k \[\d\d:\d\d<\d\d:\d\d, +[\d.]+kB/s\]", drawn), drawn

    monkeypatch.setenv(progress.MODE_ENV, "lines")
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        download.download(slow_url, tmp_path / "again.tar.gz", sha256=None)
    assert "\r" not in capsys.readouterr().err, "no bar redraws in a log"
    lines = [record.getMessage() for record in caplog.records if record.name == progress.__name__]
    assert len(lines) == 1 and re.fullmatch(r"download again\.tar\.gz: 3\.0 kB in [\d.]+ s \([\d.]+ [k]?B/s\)",
                                            lines[0]), lines


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_extraction_shows_its_bytes(kind, tmp_path, monkeypatch, capsys, caplog):
    files = {f"photos/cat/{index}.jpg": bytes(2048) for index in range(3)}  # 6 kB
    archive = tmp_path / f"photos.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for name, data in files.items():
                bundle.writestr(name, data)
    else:
        with tarfile.open(archive, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    archives.safe_extract(archive, tmp_path / "bar")
    assert re.search(rf"extract photos\.{re.escape(kind)}: .*/6\.00k", capsys.readouterr().err), "a bar with the size"

    monkeypatch.setenv(progress.MODE_ENV, "lines")
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        archives.safe_extract(archive, tmp_path / "lines")
    lines = [record.getMessage() for record in caplog.records if record.name == progress.__name__]
    assert len(lines) == 1 and re.fullmatch(rf"extract photos\.{re.escape(kind)}: 6\.0 kB in [\d.]+ s \(.+B/s\)",
                                            lines[0]), lines
    extracted = tmp_path / "lines" / "photos" / "cat"
    assert sorted(path.name for path in extracted.iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
