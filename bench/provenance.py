"""Where and how a result was measured, written by the script into every result JSON (never by hand).

    run = provenance.start()          # first thing in main(): load average and CPU counters before the work
    ...                               # the benchmark
    provenance.write(path, result, run)   # the result with its `provenance` block, written atomically

The block holds the git commit and whether tracked code differed from it at the start (`dirty`; bench/results/ does
not count), the Python, TensorFlow, Keras and numpy versions (and PyTorch's, where installed), the CPU (model name,
family, model number and stepping, its vector and matrix flags, core count), the command line, the start and end
dates, the load averages before and after, the share of the machine's CPU time that other processes used while it
ran, and the host's arithmetic speed before and after (`host_gflops`: a fixed float32 matrix product, timed).
`contended` is true when something else was running (load average over 0.5 before the start, or other processes
using more than 10% of all cores during the run): such a run's seconds are not an idle machine's. The host speed
catches what `contended` cannot see: this VM's CPUs have run the same work up to twice as slowly for hours with
nothing else in it and no steal time reported.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = "bench/results"
# A run started on a machine with this 1-minute load average, or during which other processes used this share
# of all cores' time, did not have the machine to itself.
LOAD_BEFORE_LIMIT = 0.5
OTHER_SHARE_LIMIT = 0.10
# Each version from the first installed distribution of its names (TensorFlow ships under several).
VERSIONED = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly"), "keras": ("keras",),
             "numpy": ("numpy",), "torch": ("torch",)}  # torch: the airbench reference's environment
CPU_FLAG_PREFIXES = ("avx2", "avx512", "amx")
# Two CPU generations have served these cores under one model name, "AMD EPYC": family 26 (Zen 5) on 2026-12-05
# and family 25, model 17 (Zen 4) since 2026-12-06 20:07, about half as fast on the residual net and on airbench's
# own code (BENCHMARKS.md). Provenance recorded only the model name until 2026-12-07; every result of that kind lies
# in one boot of one VM, whose /proc/cpuinfo read family 25, model 17: (model name, first start, last start,
# family, model number).
FAMILY_NOT_RECORDED = (("AMD EPYC", "2026-12-06 20:07:00", "2026-12-07 10:40:00", 25, 17),)
# The host-speed probe: the median of a few 1024x1024 float32 products (2.1 GFLOP each, 7-30 ms here).
SPEED_SIDE = 1024
SPEED_REPEATS = 7


@dataclass(frozen=True)
class Run:
    """What `start` saw: when, the load average, and the CPU counters to subtract at the end."""

    date: str
    wall_started: float
    load_average: tuple[float, float, float]
    busy_ticks: int | None
    own_cpu_seconds: float
    git: dict
    host_gflops: float | None = None


def start() -> Run:
    return Run(date=time.strftime("%Y-%m-%d %H:%M:%S"), wall_started=time.monotonic(),
               load_average=_load_average(), busy_ticks=_busy_ticks(), own_cpu_seconds=_own_cpu_seconds(),
               git=git_state(), host_gflops=host_gflops())


def collect(run: Run, *, argv: list[str] | None = None) -> dict:
    """The provenance block for a run begun with `start()` and ending now."""
    wall = time.monotonic() - run.wall_started
    cores = os.cpu_count() or 1
    other_share = None
    busy = _busy_ticks()
    if busy is not None and run.busy_ticks is not None and wall > 0:
        all_busy = (busy - run.busy_ticks) / os.sysconf("SC_CLK_TCK")
        own = _own_cpu_seconds() - run.own_cpu_seconds
        other_share = round(max(0.0, all_busy - own) / (wall * cores), 3)
    load_after = _load_average()
    contended = run.load_average[0] > LOAD_BEFORE_LIMIT or (other_share or 0.0) > OTHER_SHARE_LIMIT
    return {"command": command_line(argv), "date": run.date, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_seconds": round(wall, 1), "git": run.git, "versions": versions(), "cpu": cpu(),
            "load_average": {"before": list(run.load_average), "after": list(load_after)},
            "other_processes_cpu_share": other_share, "contended": contended,
            "host_gflops": {"before": run.host_gflops, "after": host_gflops()}}


def write(path: Path, result: dict, run: Run, *, argv: list[str] | None = None) -> dict:
    """`result` with its provenance block, written atomically to `path` (a killed run leaves no half-written
    file); returns what was written."""
    record = {**result, "provenance": collect(run, argv=argv)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(staged, path)
    return record


def command_line(argv: list[str] | None = None) -> str:
    """How to run this again from the repository root: `python -m bench.x ARGS` for a module run with -m."""
    argv = list(sys.argv if argv is None else argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None and spec.name else f"python {argv[0]}"
    return " ".join([program, *(shlex.quote(argument) for argument in argv[1:])])


def git_state() -> dict:
    """The checked-out commit and whether tracked files outside bench/results differ from it."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False,
                                    timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RESULTS_DIR}")
    return {"commit": commit, "dirty": None if changed is None else bool(changed)}


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package, distributions in VERSIONED.items():
        found[package] = None
        for distribution in distributions:
            try:
                found[package] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def cpu(cpuinfo: str | None = None) -> dict:
    """Model name, the vector and matrix flags that decide the speed of these models (AVX2, AVX-512 and its
    BF16/VNNI extensions, AMX), and the number of cores this process may use."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""

    def field(name: str) -> str | None:
        for line in cpuinfo.splitlines():
            key, separator, value = line.partition(":")
            if separator and key.strip() == name:
                return value.strip()
        return None

    def number(name: str) -> int | None:
        value = field(name)
        return int(value) if value is not None and value.isdigit() else None

    flags = (field("flags") or "").split()
    # Family and model number tell CPUs of one model name apart (an AMD EPYC of family 25 or 26: 2x apart here).
    return {"model": field("model name") or platform.processor() or platform.machine(),
            "family": number("cpu family"), "model_number": number("model"), "stepping": number("stepping"),
            "flags": sorted({flag for flag in flags if flag.startswith(CPU_FLAG_PREFIXES)}),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def cpu_name(block: dict) -> str:
    """The CPU of a provenance block as tables and plots name it: the model name, the family and model number
    where known (recorded, or from FAMILY_NOT_RECORDED for the results before they were), the widest vector unit."""
    cpu = block["cpu"]
    family, model_number = cpu.get("family"), cpu.get("model_number")
    if family is None:
        for model, first, last, known_family, known_number in FAMILY_NOT_RECORDED:
            if cpu["model"] == model and first <= block.get("date", "") <= last:
                family, model_number = known_family, known_number
    generation = f"family {family}, model {model_number}; " if family is not None else ""
    return f"{cpu['model']} ({generation}{vector_class(cpu['flags'])})"


def vector_class(flags: list[str]) -> str:
    """The widest matrix or vector unit among recorded CPU flags: what most decides these models' speed."""
    if any(flag.startswith("amx") for flag in flags):
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "no AVX2"


def host_gflops(side: int = SPEED_SIDE, repeats: int = SPEED_REPEATS) -> float | None:
    """float32 GFLOP/s of a fixed matrix product on all of this process's cores now (the median of `repeats`
    timings after one warm-up), or None without numpy. Only comparable between runs on one CPU model."""
    try:
        import numpy as np
    except ImportError:
        return None
    generator = np.random.default_rng(0)
    left = generator.standard_normal((side, side), dtype=np.float32)
    right = generator.standard_normal((side, side), dtype=np.float32)
    left @ right
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        left @ right
        seconds.append(time.perf_counter() - started)
    return round(2 * side**3 / sorted(seconds)[len(seconds) // 2] / 1e9, 1)


def _load_average() -> tuple[float, float, float]:
    try:
        return tuple(round(value, 2) for value in os.getloadavg())
    except OSError:
        return (0.0, 0.0, 0.0)


def _busy_ticks() -> int | None:
    """Non-idle CPU time of the whole machine since boot, in clock ticks (/proc/stat), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(value) for value in fields[:8]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def _own_cpu_seconds() -> float:
    """CPU time of this process and of every finished child (and theirs): the benchmark's own work."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
