"""`make compare` and `make exp-show` on a real git + DVC repository holding an experiment of each state: done, failed,
running and queued (DVC's own queue, `dvc queue start`). A stand-in stage takes the project's params.yaml and writes
its two metrics files with their real keys in a fraction of a second, so the whole module takes seconds, not a
training."""

from __future__ import annotations

import contextlib
import csv
import io
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from imgclf import smoke_copy
from imgclf.entry_points import PROJECT_ROOT
from imgclf.evaluation import experiments_table

pytestmark = pytest.mark.duration(seconds=45)  # about, under make test: orders the modules

SETTLE_SECONDS = 240  # a queue worker's start and two tiny experiments, on a busy 2-core machine

# The scalar keys of the evaluate stage's metrics.json per model (evaluate.headline) and of the analysis stage's
# summary.json (comparison.compare): the columns `dvc exp show` gets from this project.
HEADLINE_KEYS = ("accuracy", "loss", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1",
                 "weighted_precision", "weighted_recall", "weighted_f1", "ece", "ece_calibrated", "temperature",
                 "loss_calibrated", "accuracy_calibrated", "test_images", "images_per_second", "parameter_count",
                 "model_size_mb", "degenerate")

# Train: the scratch "model" is its epoch count. Evaluate: fails for the backbone `broken`, waits for the test's
# release file for the backbone `blocking` (so it is running while the test looks), else writes the metrics.
STAGE = '''\
import json, pathlib, sys, time

import yaml

params = yaml.safe_load(pathlib.Path("params.yaml").read_text())
epochs, backbone = params["scratch"]["epochs"], params["transfer"]["backbone"]
model = pathlib.Path("models/scratch/model.txt")
if sys.argv[1] == "train":
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_text(str(epochs))
    sys.exit()
if backbone == "broken":
    sys.exit("error: no backbone named 'broken'")
if backbone == "blocking":
    signals = pathlib.Path(SIGNALS)
    (signals / "started").touch()
    deadline = time.monotonic() + 300
    while not (signals / "release").exists():
        if time.monotonic() > deadline:
            sys.exit("error: never released")
        time.sleep(0.2)
accuracy = {"scratch": 0.5 + int(model.read_text()) / 100, "transfer": 0.6 + len(backbone) / 100}
metrics = {name: {key: round(value + index / 1000, 6) for index, key in enumerate(KEYS)}
           for name, value in accuracy.items()}
difference = accuracy["transfer"] - accuracy["scratch"]
summary = {"test_images": 100, "both_right": epochs, "only_scratch_right": 3, "only_transfer_right": 4 + epochs,
           "both_wrong": 5, "scratch_accuracy": accuracy["scratch"], "transfer_accuracy": accuracy["transfer"],
           "accuracy_difference": difference,
           "accuracy_difference_ci": {"low": difference - 0.1, "high": difference + 0.1, "level": 0.95},
           "mcnemar": {"statistic": float(epochs), "p_value": 0.5 / (1 + epochs), "exact": True},
           "comparison_meaningful": 1}
for path, data in (("results/evaluate/metrics.json", metrics), ("results/analysis/summary.json", summary)):
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps(data))
'''

# As the project's dvc.yaml: the metrics files inside the evaluate and analyze outputs (cached, out of git), named
# in the top-level `metrics:`.
DVC_YAML = {
    "stages": {
        "train": {"cmd": "python stage.py train", "deps": ["stage.py"], "params": ["scratch.epochs"],
                  "outs": ["models/scratch"]},
        "evaluate": {"cmd": "python stage.py evaluate", "deps": ["stage.py", "models/scratch"],
                     "params": [{"params.yaml": None}], "outs": ["results/evaluate", "results/analysis"]},
    },
    "metrics": [experiments_table.EVALUATE_METRICS, experiments_table.ANALYSIS_SUMMARY],
}


def _run(root: Path, *command: str, env: dict[str, str] | None = None, capture: bool = True) -> str:
    """`command` in `root`; its stdout. `capture=False` for `dvc queue start`: the worker it leaves behind would keep
    captured pipes open until it exits."""
    output = {"capture_output": True} if capture else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    result = subprocess.run(command, cwd=root, env=env or smoke_copy.environment(root), text=True, check=False,
                            timeout=300, **output)
    assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout or ""


def _dvc(root: Path, *args: str, **kwargs) -> str:
    return _run(root, str(Path(sys.executable).parent / "dvc"), *args, **kwargs)


def _failed_refs(root: Path) -> list[str]:
    """The git refs where DVC's queue files failed experiments (cheaper to watch than a `dvc` process)."""
    return [ref for ref in _run(root, "git", "for-each-ref", "--format=%(refname)", "refs/exps").split()
            if "/celery/failed" in ref]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Iterator[Path]:
    """A committed baseline `main` (the project's params.yaml: 25 scratch epochs), then: `epochs-2` done in the
    workspace; from there, queued and started with one worker, `broken` (failed) and `blocked` (running); then
    `waiting`, queued behind it. Afterwards `blocked` is released and the worker stopped."""
    base = tmp_path_factory.mktemp("compare")
    root, signals = base / "project", base / "signals"
    root.mkdir()
    signals.mkdir()
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    (root / "stage.py").write_text(f"SIGNALS = {str(signals)!r}\nKEYS = {HEADLINE_KEYS!r}\n{STAGE}")
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    _run(root, "git", "init", "-q", "-b", "main")
    _dvc(root, "init", "-q")
    _dvc(root, "repro", "-q")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "baseline")
    _dvc(root, "exp", "run", "-q", "-n", "epochs-2", "-S", "scratch.epochs=2")
    _dvc(root, "exp", "run", "--queue", "-q", "-n", "broken", "-S", "transfer.backbone=broken")
    _dvc(root, "exp", "run", "--queue", "-q", "-n", "blocked", "-S", "transfer.backbone=blocking")
    _dvc(root, "queue", "start", "--jobs", "1", capture=False)  # one worker: first in, first run
    try:
        deadline = time.monotonic() + SETTLE_SECONDS
        while not ((signals / "started").exists() and _failed_refs(root)):
            assert time.monotonic() < deadline, _dvc(root, "queue", "status")
            time.sleep(1)
        _dvc(root, "exp", "run", "--queue", "-q", "-n", "waiting", "-S", "scratch.epochs=9")
        yield root
    finally:
        (signals / "release").touch()
        with contextlib.suppress(AssertionError):
            _dvc(root, "queue", "remove", "--queued")
            _dvc(root, "queue", "stop")
        deadline = time.monotonic() + 60  # the worker exits once its task is done; leave nothing running
        while "0 active, 0 idle" not in _dvc(root, "queue", "status") and time.monotonic() < deadline:
            time.sleep(2)


def _table(text: str) -> dict[str, dict[str, str]]:
    """`make compare`'s table: {experiment: {column title: cell}}, cut at the widths of the dashed line."""
    lines = text.splitlines()
    spans, start = [], 0
    for dashes in lines[1].split(experiments_table.GAP):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + len(experiments_table.GAP)
    titles = [lines[0][begin:end].strip() for begin, end in spans]
    rows = [dict(zip(titles, (line[begin:end].strip() for begin, end in spans), strict=True))
            for line in lines[2:] if line and not line.startswith("also differ")]
    return {row["experiment"]: row for row in rows}


@pytest.mark.integration
def test_compare_gives_numbers_only_to_finished_experiments_and_names_every_state(sweep):
    # DVC itself fills the failed experiment's metrics in from the workspace it was queued from: epochs-2's.
    dvc_rows = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(_dvc(sweep, "exp", "show", "--csv")))}
    assert dvc_rows["broken"]["State"] == "Failed"
    assert dvc_rows["broken"]["scratch.accuracy"] == dvc_rows["epochs-2"]["scratch.accuracy"] == "0.52"

    output = _run(sweep, sys.executable, "-m", "imgclf.evaluation.experiments_table")
    assert all(len(line) <= experiments_table.WIDTH for line in output.splitlines()), output
    table = _table(output)
    metrics = ("scratch acc", "transfer acc", "diff", "McNemar p")
    assert list(next(iter(table.values()))) == ["experiment", "state", "scratch.epochs", "transfer.backbone",
                                                *metrics], output
    assert {name: row["state"] for name, row in table.items()} == {
        "workspace": "-", "main": "-", "epochs-2": "done", "broken": "failed", "blocked": "running",
        "waiting": "queued"}, output
    assert [table["main"][title] for title in metrics] == ["0.7500", "0.6800", "-0.0700", "0.019"], output
    assert [table["epochs-2"][title] for title in metrics] == ["0.5200", "0.6800", "+0.1600", "0.167"], output
    for name in ("broken", "blocked", "waiting"):
        assert [table[name][title] for title in metrics] == ["-"] * 4, output
    # Each keeps its own params: those it was queued with.
    assert (table["broken"]["scratch.epochs"], table["broken"]["transfer.backbone"]) == ("2", "broken")
    assert (table["waiting"]["scratch.epochs"], table["waiting"]["transfer.backbone"]) == ("9", "resnet50")


@pytest.mark.integration
def test_exp_show_form_fits_200_columns_with_every_cell_whole(sweep, exp_show_form):
    # Two ways DVC prints: in a terminal through a pager, at the table's whole width (any output but a terminal
    # gets that width too); with --no-pager, cut to the terminal's width with cells shortened to "…".
    env = {**smoke_copy.environment(sweep), "COLUMNS": "200"}
    everything = _dvc(sweep, "exp", "show", env=env)
    assert max(len(line) for line in everything.splitlines()) > 200, "the whole table fits: nothing to show"
    assert "…" in _dvc(sweep, "exp", "show", "--no-pager", env=env)

    for pager in ([], ["--no-pager"]):
        output = _dvc(sweep, "exp", "show", *exp_show_form.args, *pager, env=env)
        lines = output.splitlines()
        assert all(len(line) <= 200 for line in lines), output
        assert "…" not in output, output
        header = next(line for line in lines if "Experiment" in line)
        assert header.split() == ["Experiment", "State", "scratch.accuracy", "transfer.accuracy", "scratch.epochs",
                                  "transfer.backbone"], output
        assert {"Failed", "Running", "Queued"} <= set(output.split()), output


def test_exp_show_form_drops_no_param_and_the_manual_shows_it(exp_show_form):
    params = experiments_table.flatten(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
    assert [key for key in params if not exp_show_form.keeps(key)] == []
    page = re.sub(r" *\\\n *", " ", (PROJECT_ROOT / "docs" / "experiments.md").read_text())  # continued lines joined
    assert f"dvc exp show {shlex.join(exp_show_form.args)}" in page
