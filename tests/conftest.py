"""Everything the test modules share: the real params.yaml shrunk, tiny generated inputs written as real files, one
real pipeline run per test session, and helpers for command lines, free ports, servers and headless Chromium.

Test modules never import each other or this file: they ask for these fixtures by name. Helpers that are
functions (`write_image_folder`, `free_port`, ...) are session fixtures returning the function, so module-scoped
fixtures can use them too.

Layout: tests/code (units of the package), tests/data (sources, images, preprocessing), tests/model (models and
training), tests/pipeline (DVC, MLflow, serving and the command line on a real pipeline run). Markers: `slow` on
each test that trains or uses `trained_project`, `integration` on each test that spawns DVC, a stage, `mlflow run`
or a server, or uses the pipeline run (both checked at collection for the fixtures that imply them), `gpu` on tests
that need a GPU (skipped without one), `browser` on tests that open headless Chromium, `shared` on tests that read
../shared, `duration` on the longer modules of fast tests (it orders them). The order and those checks:
tests/plugins/scheduling.py.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclf.artifacts import MLFLOW_STORE_FILE
from imgclf.entry_points import PROJECT_ROOT

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite never calls out: DVC sends usage statistics from a daemon it starts after each command unless told not
# to (the sandbox copies' config says so; the user's own commands tested here would not). MLflow's telemetry is off
# under pytest already (PYTEST_CURRENT_TEST); the setting makes it plain for the processes the tests start.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Under pytest-xdist each worker is a process running TensorFlow, and each stage a test starts is another: by
# default every one sizes its thread pools to all cores, so two workers on two cores oversubscribe and thrash.
# A worker's share of the cores, inherited by the subprocesses it starts (TensorFlow reads these variables).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_variable, _share)

_PREBUILD = pytest.StashKey[subprocess.Popen]()

SHARED = PROJECT_ROOT.parent / "shared"
SHARED_CIFAR = SHARED / "data" / "cifar10-jpg.tar.gz"
SHARED_BACKBONE = SHARED / "models" / "efficientnet_lite0_imagenet_notop.keras"


# --- markers and order: tests/plugins/scheduling.py ---------------------------------------------------------------

# The suite's order (long first, for pytest-xdist), the markers the fixtures imply (`slow`, `integration`)
# and IMGCLF_TEST_TIMELINE: a local plugin.
pytest_plugins = ["tests.plugins.scheduling"]


@functools.cache
def _gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and _gpu_count() == 0:
        pytest.skip("needs a GPU: TensorFlow sees none here (install `tensorflow` instead of `tensorflow-cpu` on a "
                    "machine with a CUDA GPU)")


# --- the real configuration --------------------------------------------------------------------------------------

@pytest.fixture
def params_dict() -> dict:
    """The project's real params.yaml as a dict (tests shrink it, they never invent a parallel config)."""
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


@pytest.fixture
def tiny_params_dict(params_dict) -> dict:
    from imgclf.smoke_copy import SMOKE_OVERRIDES, merge

    return merge(params_dict, SMOKE_OVERRIDES)


@pytest.fixture(scope="session")
def shared_backbone() -> Path:
    """The EfficientNet-Lite0 backbone in ../shared; the test is skipped when it is absent."""
    if not SHARED_BACKBONE.is_file():
        pytest.skip(f"{SHARED_BACKBONE} absent (the ../shared EfficientNet-Lite0 backbone)")
    return SHARED_BACKBONE


@pytest.fixture(scope="session")
def shared_cifar() -> Path:
    """The CIFAR-10 JPEG archive in ../shared; the test is skipped when it is absent."""
    if not SHARED_CIFAR.is_file():
        pytest.skip(f"{SHARED_CIFAR} absent (the ../shared CIFAR-10 archive)")
    return SHARED_CIFAR


@pytest.fixture(scope="session")
def smoke_experiment() -> str:
    """The MLflow experiment a pipeline run with the smoke settings records to."""
    from imgclf import smoke_copy

    return smoke_copy.SMOKE_OVERRIDES["mlflow"]["experiment"]


# --- tiny generated inputs, written as real files ----------------------------------------------------------------

def _write_image_folder(root: Path, counts: dict[str, int], *, size: int = 24, seed: int = 0,
                        split: str | None = None) -> Path:
    """`root/[split/]<class>/<i>.png`: per-class colour with noise, so classes are learnable."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(sorted(counts.items())):
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([(index * 90) % 256, (index * 160 + 60) % 256, (index * 40 + 120) % 256])
        for number in range(count):
            noise = rng.integers(-30, 30, size=(size, size, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{number:04d}.png")
    return root


def _write_prepared(root: Path, *, class_names: list[str], per_class: dict[str, int], size: int = 8,
                    seed: int = 0, pixels: dict[str, np.ndarray] | None = None) -> dict:
    """`root` as the preprocess stage leaves it: shards per split, meta.json and manifest.csv (`pixels`: a split's
    images, class by class, instead of generated ones)."""
    from imgclf import artifacts, fileio
    from imgclf.data import tfdata

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, counts, shards, next_id = [], {}, {}, 0
    for split, count in per_class.items():
        labels = np.repeat(np.arange(len(class_names)), count)
        ids = np.arange(next_id, next_id + len(labels))
        next_id += len(labels)
        colours = (np.arange(len(class_names))[:, None] * np.array([70, 130, 200]) % 256).astype(np.int64)
        images = [np.clip(colours[label] + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                  for label in labels] if split not in (pixels or {}) else list(pixels[split])
        shards[split] = tfdata.write_shards(root, split, zip(images, labels, ids, strict=True), count=len(labels),
                                            examples_per_shard=1000)
        rows += [{"id": int(i), "split": split, "label": int(label), "class_name": class_names[label],
                  "original": f"{class_names[label]}/{i}.png"} for i, label in zip(ids, labels, strict=True)]
        counts[split] = [count] * len(class_names)
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "split", "label", "class_name", "original"])
        writer.writeheader()
        writer.writerows(rows)
    meta = {"source": "synthetic", "class_names": class_names, "num_classes": len(class_names), "image_size": size,
            "channels": 3, "resize": "pad", "counts": {split: int(sum(value)) for split, value in counts.items()},
            "counts_per_class": counts, "source_sha256": None, "skipped": 0, "shards": shards}
    fileio.atomic_write_json(root / artifacts.META_FILE, meta)
    return meta


def _fake_probabilities(labels: np.ndarray, *, num_classes: int, accuracy: float, seed: int,
                        sharpness: float = 3.0) -> np.ndarray:
    """Softmax scores that are right on about `accuracy` of the images (wrong ones pick another class)."""
    from scipy import special

    rng = np.random.default_rng(seed)
    predicted = labels.copy()
    wrong = rng.random(len(labels)) > accuracy
    predicted[wrong] = (labels[wrong] + rng.integers(1, num_classes, wrong.sum())) % num_classes
    logits = rng.normal(size=(len(labels), num_classes))
    logits[np.arange(len(labels)), predicted] += sharpness
    return special.softmax(logits, axis=1).astype(np.float32)


def _write_evaluation(evaluate_dir: Path, *, ids: np.ndarray, labels: np.ndarray,
                      probabilities: dict[str, np.ndarray], class_names: list[str]) -> None:
    """The files the analysis stage reads, as the evaluate stage writes them (no models, no MLflow)."""
    from imgclf import fileio
    from imgclf.evaluation import evaluate

    details = {"class_names": class_names}
    for model, scores in probabilities.items():
        predictions = evaluate.Predictions(ids=ids, labels=labels, probabilities=scores, images_per_second=100.0)
        evaluate.write_predictions(evaluate_dir / evaluate.predictions_file(model), predictions, class_names,
                                   top_k=5)
        evaluate.write_probabilities(evaluate_dir / evaluate.probabilities_file(model), predictions)
        result = evaluate.classification_metrics(labels, scores, class_names)
        result.update(evaluate.calibration_metrics(labels=labels, probabilities=scores, validation_labels=labels,
                                                   validation_probabilities=scores, bins=15))
        result.update({"test_images": len(labels), "images_per_second": 100.0, "parameter_count": 1000,
                       "model_size_mb": 0.1})
        details[model] = result
    fileio.atomic_write_json(evaluate_dir / evaluate.DETAILS_FILE, details)


@pytest.fixture(scope="session")
def write_image_folder() -> Callable[..., Path]:
    """`write_image_folder(root, {"cat": 3, "dog": 2}, size=24, seed=0, split=None)`: learnable PNG class folders."""
    return _write_image_folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """A real (untrained) two-class .keras model on 8x8 RGB and the meta.json of its data (read-only: tests that
    need a changed model write a copy)."""
    import keras

    folder = tmp_path_factory.mktemp("model")
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    model_path = folder / "model.keras"
    keras.Model(inputs, outputs).save(model_path)
    meta = folder / "meta.json"
    meta.write_text(json.dumps({"class_names": ["a", "b"], "image_size": 8, "channels": 3, "resize": "pad"}))
    return model_path, meta


@pytest.fixture(scope="session")
def write_prepared() -> Callable[..., dict]:
    """`write_prepared(root, class_names=[...], per_class={"train": 2, ...}, size=8, pixels={split: images})`:
    prepared data (real TFRecord shards, meta.json, manifest.csv); returns the meta."""
    return _write_prepared


@pytest.fixture(scope="session")
def fake_probabilities() -> Callable[..., np.ndarray]:
    """`fake_probabilities(labels, num_classes=3, accuracy=0.8, seed=0)`: softmax scores right on about
    `accuracy` of the images."""
    return _fake_probabilities


@pytest.fixture(scope="session")
def write_evaluation() -> Callable[..., None]:
    """`write_evaluation(evaluate_dir, ids=..., labels=..., probabilities={model: scores}, class_names=[...])`:
    the evaluate stage's output files."""
    return _write_evaluation


# --- one real pipeline run per test session ----------------------------------------------------------------------

def _shared_base(tmp_path_factory) -> Path:
    """pytest's base temporary directory of this run, the same for every xdist worker (popen-gw<N>/ is a worker's
    own; its parent is the run's)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _build_once(base: Path, name: str, build: Callable[[Path], None]) -> Path:
    """`build(base / name)` once per test session, also under pytest-xdist: whoever takes the lock first builds,
    the others wait and reuse it (or fail with the builder's error rather than repeat minutes of a failing build)."""
    folder, done, failed = base / name, base / f"{name}.done", base / f"{name}.failed"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if failed.is_file():
            pytest.fail(f"building {name} failed (once, for every test that needs it): {failed.read_text()}")
        if not done.is_file():
            if folder.exists():
                shutil.rmtree(folder)  # a half-made build of an interrupted session
            folder.mkdir()
            try:
                build(folder)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {str(error)[-3000:]}")
                raise
            done.touch()
    return folder


def _build_store_template(folder: Path) -> None:
    """An empty MLflow SQLite store, made by MLflow itself: its tables, then every schema migration."""
    import mlflow

    mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / MLFLOW_STORE_FILE}").search_experiments()


@pytest.fixture(scope="session")
def new_mlflow_store(tmp_path_factory) -> Callable[[Path], str]:
    """`new_mlflow_store(directory)`: the empty store MLflow creates on first use, placed at
    `directory/mlflow.db`; returns its URI. MLflow creates one in about 2 s of CPU (schema migrations), a copy
    of the session's template takes milliseconds, and many tests need one. The store MLflow writes differs in
    one row: the Default experiment's artifact location, under the working directory of the process that made it
    (the directory here, where the stages run). The pipeline run (`trained_project`) still starts from no store."""
    template = _build_once(_shared_base(tmp_path_factory), "mlflow-store-template", _build_store_template)

    def create(directory: Path) -> str:
        store = Path(directory) / MLFLOW_STORE_FILE
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template / MLFLOW_STORE_FILE, store)
        with contextlib.closing(sqlite3.connect(store)) as connection, connection:
            connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                                (str(store.parent.resolve() / "mlruns" / "0"),))
        return f"sqlite:///{store}"

    return create


def _params_trace(trained: Path) -> Path:
    return trained.parent / "params_read.jsonl"


def _repro_log(trained: Path) -> Path:
    return trained.parent / "repro.log"


def _build_trained(folder: Path) -> None:
    from imgclf import smoke_copy, stage_runner

    root = smoke_copy.create(folder / "project", source_root=PROJECT_ROOT, overrides=smoke_copy.SMOKE_OVERRIDES,
                             git=True)
    # Each stage records the params keys it read (tests/code/test_deps.py compares them with its PARAMS).
    os.environ[stage_runner.PARAMS_TRACE_ENV] = str(_params_trace(root))
    try:
        result = smoke_copy.dvc(root, "repro")
    finally:
        del os.environ[stage_runner.PARAMS_TRACE_ENV]
    # What `dvc repro` printed: DVC's lines (stdout), then the stages' logs (stderr). tests/pipeline/test_quiet.py.
    _repro_log(root).write_text(result.stdout + result.stderr, encoding="utf-8")
    smoke_copy.commit(root, "pipeline run")


def _build_experiment(folder: Path, trained: Path) -> None:
    import re

    from imgclf import fileio, smoke_copy

    root = folder / "project"
    shutil.copytree(trained, root, symlinks=True)
    result = smoke_copy.dvc(root, "exp", "run", "-S", "transfer.backbone=mobilenet_v2")
    match = re.search(r"Ran experiment\(s\): (\S+)", result.stdout)
    if match is None:
        raise RuntimeError(f"dvc exp run named no experiment:\n{result.stdout[-2000:]}")
    baseline = smoke_copy.run_git(root, "rev-parse", "HEAD").stdout.strip()
    fileio.atomic_write_json(folder / "experiment.json", {"experiment": match.group(1), "baseline": baseline})


def _trained(base: Path) -> Path:
    return _build_once(base, "trained", _build_trained) / "project"


def _experiment(base: Path) -> Path:
    trained = _trained(base)
    return _build_once(base, "mlflow-experiment", lambda folder: _build_experiment(folder, trained)) / "project"


def pytest_collection_finish(session):
    """When a selected test needs the pipeline run, start building it now, in the background: it then runs
    (minutes) while the unit tests do, instead of stalling the first test that asks for it. The fixtures wait for it
    under the same lock. A separate process, so that tests changing this process's environment or working
    directory (monkeypatch) cannot leak into it."""
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "trained_project" not in needed or session.config.option.collectonly:
        return
    base = _shared_base(session.config._tmp_path_factory)  # the factory behind the tmp_path_factory fixture
    target = "_experiment" if "experiment_project" in needed else "_trained"
    script = f"import sys; from tests import conftest; conftest.{target}(__import__('pathlib').Path(sys.argv[1]))"
    with open(base / f"prebuild-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.log", "wb") as log:
        session.config.stash[_PREBUILD] = subprocess.Popen(
            [sys.executable, "-c", script, str(base)], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


def pytest_sessionfinish(session, exitstatus):
    """A session stopped early (-x, Ctrl-C) stops the background build and the stages it started. A worker that
    simply ran out of tests leaves it be: another worker's tests may be waiting for it."""
    process = session.config.stash.get(_PREBUILD, None)
    stopped = exitstatus == pytest.ExitCode.INTERRUPTED or bool(session.shouldfail or session.shouldstop)
    if process is not None and process.poll() is None and stopped:
        _stop(process)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """The real pipeline (`dvc repro`, smoke settings) run once per test session in a git repository with its own
    MLflow store, results committed. Shared by every test (and every xdist worker) that only reads it: never run
    DVC in it or change it; work on `copy_trained_project(destination)`. Tests using it are marked slow."""
    return _trained(_shared_base(tmp_path_factory))


@pytest.fixture(scope="session")
def params_trace(trained_project) -> Path:
    """Where `trained_project`'s stages recorded the params keys they read, one JSON line per stage run."""
    return _params_trace(trained_project)


@pytest.fixture(scope="session")
def repro_log(trained_project) -> str:
    """What `trained_project`'s `dvc repro` printed: its stdout (DVC's lines), then its stderr (the stages' logs)."""
    return _repro_log(trained_project).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def copy_trained_project(trained_project) -> Callable[[Path], Path]:
    """`copy_trained_project(destination)`: a working copy of `trained_project` (files, git history, DVC cache,
    MLflow store) to change freely. The store records absolute artifact locations: artifacts of runs made in the
    copy land in the original's `mlartifacts/`, which no test reads by listing."""
    def copy(destination: Path) -> Path:
        shutil.copytree(trained_project, destination, symlinks=True)
        return destination

    return copy


@pytest.fixture(scope="session")
def experiment_project(trained_project, tmp_path_factory) -> Path:
    """A copy of `trained_project` with a second experiment run (`dvc exp run -S transfer.backbone=mobilenet_v2`),
    made once per session and only read. `<project>/../experiment.json` holds the experiment's name and the
    baseline commit."""
    return _experiment(_shared_base(tmp_path_factory))


# --- `make exp-show`: DVC's table in 200 columns ---------------------------------------------------------------

def _exp_show_form() -> list[str]:
    """The options `make exp-show` gives `dvc exp show` (the Makefile's EXP_SHOW_FORM), as the shell splits them."""
    result = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(PROJECT_ROOT), "--eval",
                             'print-exp-show-form: ; @printf "%s\\n" $(EXP_SHOW_FORM)', "print-exp-show-form"],
                            capture_output=True, text=True, check=True, timeout=60)
    return result.stdout.splitlines()


@pytest.fixture(scope="session")
def exp_show_form() -> types.SimpleNamespace:
    """`.args`: `make exp-show`'s options for `dvc exp show`; `.keeps(column)`: whether a column whose values differ
    between experiments survives them (matched by --keep, or by no --drop pattern: DVC anchors both at the start)."""
    args = _exp_show_form()
    drop, keep = (re.compile("|".join(value for option, value in itertools.pairwise(args) if option == name))
                  for name in ("--drop", "--keep"))  # as DVC joins repeated options
    return types.SimpleNamespace(args=args, keeps=lambda column: bool(keep.match(column)) or not drop.match(column))


# --- command line, ports, servers, browser -----------------------------------------------------------------------

def _run_cli(*argv: str) -> int:
    """`imgclf ARGV` in this process; its exit code."""
    from imgclf.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (servers fork workers and job consumers), SIGKILL what lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _running_server(command: list[str], *, ready_url: str, cwd: Path, env: dict[str, str], log_path: Path,
                    start_seconds: float) -> Iterator[subprocess.Popen]:
    """`command` in its own process group, output to `log_path`, until `ready_url` answers 200 (the test fails with
    the log when it exits or takes longer than `start_seconds`); always stopped, with everything it forked."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            if process.poll() is not None:
                pytest.fail(f"{Path(command[0]).name} exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(OSError, urllib.error.URLError), \
                    urllib.request.urlopen(ready_url, timeout=2) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from {ready_url} in {start_seconds} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield process
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., int]:
    """`run_cli("predict", ...)`: the `imgclf` command line in this process; returns its exit code."""
    return _run_cli


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """`free_port()`: a free TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture(scope="session")
def running_server():
    """`with running_server(command, ready_url=..., cwd=..., env=..., log_path=..., start_seconds=...) as process:`
    a server started, waited for and always stopped (its whole process group)."""
    return _running_server


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """Serves tmp_path/served on 127.0.0.1 and records each requested path."""
    monkeypatch.setenv("no_proxy", "*")  # a proxy from the environment must not see local requests
    monkeypatch.setenv("NO_PROXY", "*")
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield types.SimpleNamespace(root=root, url=f"http://127.0.0.1:{server.server_port}", requests=requests)
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium executable; the test is skipped when none is installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium or chromium-browser on PATH (Debian: apt-get install -y chromium); "
                    "the page was not opened in a browser")
    return browser
