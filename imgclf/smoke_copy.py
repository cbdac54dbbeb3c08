"""A throwaway copy of the project that runs the real pipeline (`dvc repro`) with tiny settings.

Used by `make smoke` and the end-to-end tests: the same dvc.yaml, stages and code a user runs, in another
directory with its own data, models, results and MLflow store, so the default results are never touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from imgclf import fileio
from imgclf.config import params_from_dict, read_params_yaml

PROJECT_ENTRIES = ("dvc.yaml", "params.yaml", "stages", "imgclf", "MLproject", "python_env.yaml")
# Also copied when the copy is a git repository, so git and DVC ignore what the project ignores.
GIT_ENTRIES = (".gitignore", ".dvcignore")
# The plot templates and the offline plots page that dvc.yaml's `plots:` use (config plots.html_template).
DVC_PLOTS = Path(".dvc") / "plots"
INHERITED_MLFLOW_IDS = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")
# Commits in a copy need an author even on a machine with no git identity (CI).
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "imgclf sandbox", "GIT_AUTHOR_EMAIL": "sandbox@imgclf.invalid",
                "GIT_COMMITTER_NAME": "imgclf sandbox", "GIT_COMMITTER_EMAIL": "sandbox@imgclf.invalid"}

# Tiny but complete: every stage runs for real on generated images in well under a minute of compute.
SMOKE_OVERRIDES: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic_classes": 4, "synthetic_per_class": 40,
             "synthetic_image_size": 32},
    "preprocess": {"image_size": 32, "min_images_per_class": 5},
    "scratch": {"conv_filters": [16, 32], "pool_after": [1, 2], "dense_units": [64], "epochs": 3,
                "batch_size": 32},
    # The smallest keras.applications backbone: a random ResNet50 made every smoke project 580 MB (its 95-MB
    # model in the workspace, the DVC cache and MLflow's artifacts), copied by every test that uses one.
    "transfer": {"backbone": "mobilenet_v3_small", "weights": None, "input_size": 32, "epochs": 5,
                 "batch_size": 32, "feature_batch_size": 64},
    "analysis": {"gallery_size": 8},
    "mlflow": {"experiment": "imgclf-smoke"},
}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict update: override leaves, keep everything else."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


CODE_ENTRIES = ("dvc.yaml", "stages", "imgclf", "MLproject")  # what a long-lived copy refreshes (not its params)


def refresh_code(destination: Path, *, source_root: Path) -> None:
    """Replace a copy's code with `source_root`'s, keeping its data, params and results: a copy kept between runs
    (the benchmarks' prepared CIFAR-10) must never run the code it was made with."""
    for entry in CODE_ENTRIES:
        source, target = Path(source_root) / entry, Path(destination) / entry
        if source.is_dir():
            with fileio.staged_directory(target) as staged:
                shutil.copytree(source, staged, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            fileio.atomic_write_bytes(target, source.read_bytes())


def create(destination: Path, *, source_root: Path, overrides: dict[str, Any], git: bool = False) -> Path:
    """Copy the project into `destination` (replacing it), apply param overrides and `dvc init` it.

    With `git`, the copy is a git repository with everything committed, as a user's clone is: what
    `dvc exp run`, `dvc push` and a fresh `git clone` + `dvc pull` need.
    """
    destination = Path(destination).resolve()
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for entry in PROJECT_ENTRIES + (GIT_ENTRIES if git else ()):
        source = Path(source_root) / entry
        if source.is_dir():
            shutil.copytree(source, destination / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / entry)
    params = merge(read_params_yaml(destination / "params.yaml"), overrides)
    params_from_dict(params, source="sandbox overrides")  # fail here, not three stages later
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if git:
        run_git(destination, "init", "--quiet", "--initial-branch=main")
    init_dvc(destination, git=git, cache_type=project_cache_type(source_root))
    shutil.copytree(Path(source_root) / DVC_PLOTS, destination / DVC_PLOTS)
    if git:
        commit(destination, "imgclf sandbox")
    return destination


def init_dvc(root: Path, *, git: bool, cache_type: str | None) -> None:
    """`dvc init` plus the copy's settings, through DVC's own API in this process: the same files and the same
    schema check as `dvc init` and three `dvc config` commands, without four interpreter starts (half a second
    each; the suite makes a dozen copies)."""
    from dvc.repo import Repo

    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)  # `--quiet`: not the "Initialized DVC repository" banner
    try:
        repo = Repo.init(str(root), no_scm=not git)
    finally:
        dvc_logger.setLevel(level)
    try:
        with repo.config.edit() as config:  # validated against DVC's config schema on leaving the block
            config.setdefault("core", {})["analytics"] = False
            config.setdefault("plots", {})["html_template"] = "plots/page.html"
            if cache_type:  # link outputs to DVC's cache as the project does (copies would double a copy's size)
                config.setdefault("cache", {})["type"] = cache_type
    finally:
        repo.close()


def project_cache_type(source_root: Path) -> str | None:
    """`cache.type` of the project's committed `.dvc/config` (how DVC links outputs to its cache), or None."""
    from configobj import ConfigObj  # DVC's own config format and reader

    config = Path(source_root) / ".dvc" / "config"
    value = ConfigObj(str(config)).get("cache", {}).get("type") if config.is_file() else None
    return ",".join(value) if isinstance(value, list) else value  # unquoted, a comma makes it a list


def run_git(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run git in `root` with the sandbox identity; raise with git's output when it fails."""
    result = subprocess.run(["git", *args], cwd=root, env=environment(root), capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`git {' '.join(args)}` failed in {root} ({result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")
    return result


def commit(root: Path, message: str) -> None:
    """Stage everything git does not ignore (DVC pointers and dvc.lock included) and commit it."""
    run_git(root, "add", "--all")
    run_git(root, "commit", "--quiet", "--allow-empty", "-m", message)


def environment(root: Path) -> dict[str, str]:
    """This interpreter first on PATH (dvc.yaml says `python`), the sandbox's own MLflow store."""
    # The copy has its own store: an experiment or run id of another store (mlflow.set_experiment exports
    # MLFLOW_EXPERIMENT_ID into this process's environment) would point its stages at something absent.
    env = {key: value for key, value in os.environ.items() if key not in INHERITED_MLFLOW_IDS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(root) / 'mlflow.db'}"
    env["DVC_NO_ANALYTICS"] = "1"
    for key, value in GIT_IDENTITY.items():
        env.setdefault(key, value)
    return env


def dvc_executable() -> str:
    """This environment's `dvc` (beside this interpreter), else the one on PATH."""
    executable = Path(sys.executable).parent / "dvc"
    return str(executable) if executable.exists() else "dvc"


def dvc(root: Path, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    """Run the dvc command line in `root` (a subprocess, exactly as a user would). `capture=False` for a command
    that leaves workers behind (`dvc queue start`): they would hold captured pipes open until they exit."""
    command = [dvc_executable(), *args]
    output = {"capture_output": True} if capture else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    result = subprocess.run(command, cwd=root, env=environment(root), text=True, check=False, **output)
    if check and result.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {root} ({result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")
    return result


# Stages dvc.yaml marks `always_changed`: they run on every repro (fingerprint_data reads data.path's data) and
# `dvc status` lists them as "always changed"; a pipeline with nothing else to run is up to date.
ALWAYS_RUN = ("fingerprint_data",)


def stages_ran(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran, in order."""
    return re.findall(r"Running stage '(\w+)'", output)


def stale_stages(root: Path, *targets: str) -> set[str]:
    """The stages `dvc status` says must rerun, not counting the always-run ones."""
    listed = set(re.findall(r"^(\w+):$", dvc(root, "status", *targets).stdout, flags=re.MULTILINE))
    return listed - set(ALWAYS_RUN)


def smoke(destination: Path, *, source_root: Path) -> float:
    """Run all stages on synthetic data in `destination`; return the wall time in seconds."""
    started = time.perf_counter()
    root = create(destination, source_root=source_root, overrides=SMOKE_OVERRIDES)
    result = dvc(root, "repro")
    print(result.stdout[-4000:])
    return time.perf_counter() - started
