"""Hostile inputs, round two (issue 26): endless and trickling downloads, YAML alias bombs in params.yaml, staging
left by kill -9, file names that are not UTF-8, FIFOs given to predict and archives of very many members. Each gets
one line and exit 2 (or a skip-and-report), with nothing half-written left behind. Short limits are set here, so the
module stays within seconds.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import tarfile
import threading
import time
import types
import zipfile
from pathlib import Path

import pytest

from imgclf.data import archives, download, sources
from imgclf.errors import DataSourceError

pytestmark = pytest.mark.duration(seconds=15)  # about, under make test: orders the modules


def _fetch_folder(tmp_path: Path, path: str | Path, **options) -> dict:
    return sources.fetch_source(source="image_folder", path=str(path), sha256=None, raw_dir=tmp_path / "raw",
                                download_dir=tmp_path / "downloads", seed=0, **options)


def _hidden(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.name.startswith(".")) if folder.is_dir() else []


# ------------------------------------------------------------------ 4. endless and trickling downloads

@pytest.fixture
def hostile_server(monkeypatch):
    """A server on 127.0.0.1: /endless sends zeros with no Content-Length (64 MB at most, so old code ends),
    /announced claims 10 GB, /trickle sends a byte every 0.1 s (10 s at most), /trickle-headers a header that way.
    `.sent` counts the bytes sent."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    stop = threading.Event()
    sent = types.SimpleNamespace(bytes=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/trickle-headers":
                self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
                for _ in range(100):
                    if stop.wait(0.1):
                        return
                    self.wfile.write(b"x")
                    self.wfile.flush()
                self.wfile.write(b"\r\n\r\nbody")
                return
            self.send_response(200)
            if self.path == "/announced":
                self.send_header("Content-Length", str(10 << 30))
            self.end_headers()
            chunk, pause, limit = ((b"x", 0.1, 100) if self.path == "/trickle" else (bytes(64 << 10), 0, 1024))
            try:
                for _ in range(limit):
                    if stop.is_set():
                        return
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent.bytes += len(chunk)
                    time.sleep(pause)
            except OSError:  # the client hung up
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}", sent=sent)
    stop.set()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("path", ["/endless", "/announced"])
def test_a_download_stops_at_what_the_extraction_limits_allow(tmp_path, hostile_server, path):
    limits = archives.ExtractionLimits(max_extracted_mb=1, max_members=10)
    assert limits.max_archive_bytes() < 3 << 20
    with pytest.raises(DataSourceError, match=r"than the 2\.0 MB a download may have here .*data\.max_extracted_mb"):
        _fetch_folder(tmp_path, hostile_server.url + path, limits=limits)
    assert hostile_server.sent.bytes < 24 << 20, "the client kept reading past the cap"
    assert list((tmp_path / "downloads").iterdir()) == [] and _hidden(tmp_path) == []


@pytest.mark.parametrize("path", ["/trickle", "/trickle-headers"])
def test_a_trickling_download_stops_at_its_deadline(tmp_path, hostile_server, path):
    started = time.monotonic()
    with pytest.raises(DataSourceError, match=r"took longer than 1\.5 s in all"):
        download.download(hostile_server.url + path, tmp_path / "data.tar.gz", sha256=None, deadline_s=1.5)
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == [], "no .part file left"


# --------------------------------------------------------------- 15. archives of very many members

def _many_members(path: Path, count: int) -> Path:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as bundle:
            for number in range(count):
                bundle.writestr(f"cats/{number}.png", b"")
        return path
    with tarfile.open(path, "w:gz") as tar:
        for number in range(count):
            tar.addfile(tarfile.TarInfo(f"cats/{number}.png"), io.BytesIO(b""))
    return path


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_of_too_many_members_is_refused_before_extracting(tmp_path, kind):
    assert archives.ExtractionLimits().max_members < 300_000  # 300,000 empty files took 140 s
    archive = _many_members(tmp_path / f"many.{kind}", 50)
    with pytest.raises(DataSourceError, match=r"more than data\.max_archive_members=40 files and folders"):
        _fetch_folder(tmp_path, archive, limits=archives.ExtractionLimits(max_members=40))
    assert not (tmp_path / "raw").exists() and _hidden(tmp_path) == []
    info = _fetch_folder(tmp_path, archive, limits=archives.ExtractionLimits(max_members=50))  # at the limit
    assert info["num_examples"]["train"] == 50


# ------------------------------------------------------------------------- 15. predict on a FIFO


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_predict_refuses_a_fifo_or_device_without_opening_it(tmp_path, capsys, run_cli, tiny_model, kind):
    model, meta = tiny_model
    if kind == "device":
        special = Path("/dev/zero")
    else:
        special = tmp_path / "camera.png"
        os.mkfifo(special)
    opened, done = threading.Event(), threading.Event()

    def unblock_a_reader():
        """Old code blocked opening the FIFO: open its other end once a reader waits, so the test ends."""
        while kind == "fifo" and not done.wait(0.05):
            try:
                os.close(os.open(special, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while nobody reads
            except OSError:
                continue
            opened.set()
            return

    watcher = threading.Thread(target=unblock_a_reader, daemon=True)
    watcher.start()
    try:
        status = run_cli("predict", str(special), "--model", str(model), "--meta", str(meta))
    finally:
        done.set()
        watcher.join()
    err = capsys.readouterr().err
    assert status == 2 and err == (f"error: {special} is a FIFO, device or socket, not an image file or folder; "
                                   "give image files or folders\n"), err
    assert not opened.is_set(), "predict opened the FIFO"


# --------------------------------------------------------------------------- 5. YAML bombs in params.yaml

def _alias_bomb(levels: int = 9) -> str:
    """params.yaml's first line and a billion-laughs list under a real key: 9**levels strings once expanded."""
    lines = ["seed: 42", 'laughs: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]" for level in range(1, levels)]
    return "\n".join([*lines, f"analysis: {{score_bar_ids: *l{levels - 1}}}", ""])


@pytest.mark.parametrize(("case", "message"), [
    ("anchor", r":2: YAML anchors and aliases \(&name, \*name\) are not allowed in a params file"),
    ("deep", r": nested too deeply for a params file \(more than 16 levels\)"),
    ("big", r": more than 256 KB, far more than a params file needs"),
])
def test_params_with_aliases_deep_nesting_or_bulk_are_refused_before_parsing(tmp_path, case, message):
    from imgclf.config import ConfigError, load_params

    params = tmp_path / "params.yaml"
    text = (Path(__file__).resolve().parents[2] / "params.yaml").read_text()
    if case == "anchor":  # harmless-looking reuse, which the old loader accepted
        text = "scratch:\n  epochs: &epochs 3\ntransfer: {epochs: *epochs}\n"
    elif case == "deep":
        text = "analysis: {score_bar_ids: " + "[" * 2000 + "]" * 2000 + "}\n"
    else:
        text += "# padding\n" * 30_000
    params.write_text(text)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=message) as caught:
        load_params(params)
    assert time.monotonic() - started < 2 and "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(params))


@pytest.mark.integration
def test_an_alias_bomb_stops_the_params_check_and_dvc_in_one_line(tmp_path):
    """The check_params stage, and DVC through imgclf.dvc_cli (the MLproject entry points, make run): DVC itself
    would expand the bomb to decide what is stale before check_params runs."""
    import subprocess
    import sys

    from imgclf.entry_points import PROJECT_ROOT

    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    subprocess.run([sys.executable, "-m", "imgclf.dvc_cli", "init", "--no-scm", "-q"], cwd=tmp_path, check=True,
                   env=environment, timeout=120)
    (tmp_path / "dvc.yaml").write_text("stages:\n  check:\n    cmd: echo checked\n    params:\n      - params.yaml:\n")
    (tmp_path / "params.yaml").write_text(_alias_bomb())
    assert len(_alias_bomb()) < 3000
    stage = [sys.executable, "-m", "stages.check_params", "--params", str(tmp_path / "params.yaml"), "--out",
             str(tmp_path / "checked"), "--backbone", str(tmp_path / "backbone.json")]
    dvc = [sys.executable, "-m", "imgclf.dvc_cli", "status"]
    for command, cwd, named in ((stage, PROJECT_ROOT, tmp_path / "params.yaml"), (dvc, tmp_path, "params.yaml")):
        result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (command, result.stderr[-2000:])
        assert result.stderr == (f"error: {named}:2: YAML anchors and aliases (&name, *name) are not allowed in a "
                                 "params file (an alias can expand exponentially); write the values out\n")
    assert not (tmp_path / "checked").exists()


# ------------------------------------------------------------------------------- 8. kill -9 mid-write

_WRITER = """
import sys, time
from pathlib import Path
from imgclf import fileio
staging = fileio.staging_dir(Path(sys.argv[1]))
(staging / "shard-0.tfrecord").write_bytes(b"half a data set")
writing = fileio.atomic_path(Path(sys.argv[2]), suffix=".part")  # kept: collected, it would clean up
partial = writing.__enter__()
print(staging, partial, flush=True)
time.sleep(600)
"""


@pytest.fixture
def writers(tmp_path):
    """`start(target, file)`: a process that stages a directory for `target` and a file for `file`, then waits (as
    a stage does mid-write); returns (process, its staging paths). All are killed at the end."""
    import subprocess
    import sys

    from imgclf.entry_points import PROJECT_ROOT

    started = []

    def start(target: Path, file: Path):
        process = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(file)], stdout=subprocess.PIPE,
                                   text=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        started.append(process)
        return process, [Path(name) for name in process.stdout.readline().split()]

    yield start
    for process in started:
        process.kill()
        process.wait()
        process.stdout.close()


def test_staging_of_a_killed_stage_is_removed_at_the_next_start_and_a_live_ones_kept(tmp_path, writers, http_server,
                                                                                     tiny_params_dict,
                                                                                     write_image_folder):
    import signal

    from imgclf.config import params_from_dict
    from imgclf.data import preprocess

    data = tmp_path / "data"
    killed, killed_paths = writers(data / "prepared", data / "downloads" / "cifar.tar.gz")
    _, live_paths = writers(data / "prepared", data / "downloads" / "cifar.tar.gz")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert all(path.exists() for path in killed_paths + live_paths)
    (data / "downloads" / "notes.txt").write_text("mine")  # not staging: never touched

    _fetch_folder(tmp_path, write_image_folder(tmp_path / "photos", {"cats": 12, "dogs": 12}))
    preprocess.run(params_from_dict(tiny_params_dict), raw_dir=tmp_path / "raw", out_dir=data / "prepared", workers=1)
    (http_server.root / "other.bin").write_bytes(b"other")
    download.download(f"{http_server.url}/other.bin", data / "downloads" / "other.bin", sha256=None)
    assert not any(path.exists() for path in killed_paths), "the killed run's staging is still there"
    assert all(path.exists() for path in live_paths), "a running process lost its staging"
    assert sorted(path.name for path in (data / "downloads").iterdir() if not path.name.startswith(".")) == [
        "notes.txt", "other.bin"]


# ---------------------------------------------------------------------------- 10. names that are not UTF-8

CAFE, DOGS = os.fsdecode(b"caf\xe9.png"), os.fsdecode(b"d\xf6gs")  # Latin-1 bytes, as a Windows archive holds them


@pytest.mark.parametrize("kind", ["folder", "tar.gz"])
def test_names_that_are_not_utf8_are_kept_escaped_through_preprocess(tmp_path, tiny_params_dict, write_image_folder,
                                                                     kind):
    import csv

    from imgclf.config import params_from_dict
    from imgclf.data import preprocess

    photos = write_image_folder(tmp_path / "photos", {"cats": 12, "dogs": 12})
    (photos / "cats" / "0000.png").rename(photos / "cats" / CAFE)
    (photos / "dogs").rename(photos / DOGS)
    if kind == "tar.gz":
        with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as tar:
            tar.add(photos, arcname="photos")
    info = _fetch_folder(tmp_path, photos if kind == "folder" else tmp_path / "photos.tar.gz")
    assert info["class_names"] == ["cats", "d\\xf6gs"]
    assert "images/train/cats/caf\\xe9.png" in info["escaped_names"] and len(info["escaped_names"]) == 13
    preprocess.run(params_from_dict(tiny_params_dict), raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared",
                   workers=1)
    with open(tmp_path / "prepared" / "manifest.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and "images/train/cats/caf\\xe9.png" in {row["original"] for row in rows}
    assert {row["class_name"] for row in rows} == {"cats", "d\\xf6gs"}
    assert json.loads((tmp_path / "prepared" / "meta.json").read_text())["skipped"] == 0


def test_a_zip_name_marked_utf8_that_is_not_is_one_line(tmp_path):
    archive = tmp_path / "windows.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(zipfile.ZipInfo("cats/cafe.png"), b"x")
        bundle.writestr(zipfile.ZipInfo("dogs/dog.png"), b"x")
    data = bytearray(archive.read_bytes().replace(b"cats/cafe.png", b"cats/caf\xe9.png"))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the UTF-8 flag, in both headers
        for position in [index for index in range(len(data)) if data.startswith(signature, index)]:
            data[position + offset + 1] |= 0x08
    archive.write_bytes(bytes(data))
    with pytest.raises(DataSourceError, match=r"windows\.zip: a member's name is marked UTF-8 but is not") as caught:
        _fetch_folder(tmp_path, archive)
    assert "\n" not in str(caught.value) and not (tmp_path / "raw").exists() and _hidden(tmp_path) == []
