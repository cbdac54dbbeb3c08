"""The order the suite runs in, and the markers it is chosen by: a local pytest plugin (tests/conftest.py loads it
with `pytest_plugins`). The fixtures stay in tests/conftest.py.

- Collection fails when a test uses a fixture that implies a marker but lacks it: the pipeline run
  (`trained_project` and what is built on it) implies `slow` and `integration`; `running_server` (a server in a
  subprocess) implies `integration`. `make test-fast` deselects both markers.
- Tests are sorted long first for pytest-xdist's `--dist loadfile --no-loadscope-reorder` (Makefile), which deals
  whole modules in the order of their first test: `slow(seconds=N)` on a long test and `duration(seconds=N)` on a
  module of fast tests say how long.
- With IMGCLF_TEST_TIMELINE=<file>, one line per test: where a run's time goes.
"""

from __future__ import annotations

import collections
import os
import resource
import time

import pytest

# A test using one of these fixtures must carry these markers (checked at collection).
IMPLIED_MARKERS = {
    "trained_project": ("slow", "integration"),  # the session's pipeline run (`dvc repro`, minutes)
    "running_server": ("integration",),  # a server in its own process group
}
PIPELINE_RUN = "trained_project"


def pytest_collection_modifyitems(config, items):
    """Refuse tests that lack a marker their fixtures imply (so `-m "not slow and not integration"` stays fast),
    then sort the tests long first."""
    unmarked = sorted({f"{item.nodeid} needs @pytest.mark.{marker} (it uses {fixture})"
                       for item in items for fixture, markers in IMPLIED_MARKERS.items()
                       if fixture in getattr(item, "fixturenames", ()) for marker in markers
                       if item.get_closest_marker(marker) is None})
    if unmarked:
        raise pytest.UsageError("tests lack a marker their fixtures imply:\n  " + "\n  ".join(unmarked))
    module_seconds: dict[str, float] = collections.defaultdict(float)
    for item in items:
        module_seconds[_module(item)] += _estimated_seconds(item)
    for module, seconds in _module_durations(items).items():
        module_seconds[module] += seconds
    items.sort(key=lambda item: (_phase(item), -module_seconds[_module(item)]))


def _module_durations(items) -> dict[str, float]:
    """`pytestmark = pytest.mark.duration(seconds=N)`: a module of fast tests that takes about N s in all. Among
    the short modules dealt last, the longer go first: one dealt at the very end (test_bad_inputs, 13-26 s) kept
    one worker busy while the other idled."""
    durations = {}
    for item in items:
        marker = item.get_closest_marker("duration")
        if marker is not None:
            durations[_module(item)] = float(marker.kwargs["seconds"])
    return durations


def _module(item) -> str:
    """The test file: `--dist loadfile`'s unit of work."""
    return item.nodeid.split("::", 1)[0]


def _estimated_seconds(item) -> float:
    """`@pytest.mark.slow(seconds=N)`: about N s under `make test` on the idle 2-core machine (long tests only)."""
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("seconds", 0)) if marker is not None else 0.0


def _phase(item) -> int:
    """Long work first, short tests last. pytest-xdist (`--dist loadfile --no-loadscope-reorder`, Makefile) deals
    whole modules in the order their first test has after sorting by (phase, the module's estimated seconds), so
    the tail is made of modules of short tests that fill whichever worker frees up first: a two-minute module
    dealt last would leave the other core idle (the sweep test did: 8 min 26 s). Trainings that need no pipeline
    run go first, while the background build (tests/conftest.py, pytest_collection_finish) makes it; then the
    tests that read it, longest first; then the rest. (The sort is stable: within a phase, a module's tests keep
    their order; a module's slow tests run before its fast ones.)"""
    if item.get_closest_marker("slow") is None:
        return 2
    return 1 if PIPELINE_RUN in getattr(item, "fixturenames", ()) else 0


# --- IMGCLF_TEST_TIMELINE ------------------------------------------------------------------------------------------

_TIMELINE = os.environ.get("IMGCLF_TEST_TIMELINE")  # a file: one line per test, to see where a run's time goes
_started: dict[str, tuple[float, float]] = {}


def _cpu_seconds() -> float:
    """CPU time of this process and of the subprocesses it has reaped (the stages a test ran)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pytest_runtest_logstart(nodeid, location):
    if _TIMELINE:
        _started[nodeid] = (time.time(), _cpu_seconds())


def pytest_runtest_logfinish(nodeid, location):
    """With IMGCLF_TEST_TIMELINE=<file>: `worker start end cpu_seconds nodeid` per test (setup to teardown),
    appended. Wall time swings with what the other worker runs; CPU time is what a test costs the suite."""
    if _TIMELINE:
        started, cpu = _started.pop(nodeid, (0.0, 0.0))
        with open(_TIMELINE, "a") as handle:
            handle.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {started:.1f} {time.time():.1f} "
                         f"{_cpu_seconds() - cpu:.1f} {nodeid}\n")
