"""Shared fixtures: the real params.yaml, shrunk; tiny image folders written as real files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
SHARED_CIFAR = SHARED / "data" / "cifar10-jpg.tar.gz"
SHARED_BACKBONE = SHARED / "models" / "efficientnet_lite0_imagenet_notop.keras"


@pytest.fixture
def params_dict() -> dict:
    """The project's real params.yaml as a dict (tests shrink it, they never invent a parallel config)."""
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


@pytest.fixture
def tiny_params_dict(params_dict) -> dict:
    from imgclf.sandbox import SMOKE_OVERRIDES, merge

    return merge(params_dict, SMOKE_OVERRIDES)


def write_image_folder(root: Path, counts: dict[str, int], *, size: int = 24, seed: int = 0,
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


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """The real pipeline (`dvc repro`, smoke settings) run once in a git repository with its own MLflow store,
    results committed. Shared by every test that only reads it; a test that changes it works on a copy
    (`copy_trained_project`). Each stage records the params keys it read in `params_trace(root)`."""
    from imgclf import cli, sandbox

    root = sandbox.create(tmp_path_factory.mktemp("trained") / "project", source_root=PROJECT_ROOT,
                          overrides=sandbox.SMOKE_OVERRIDES, git=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cli.PARAMS_TRACE_ENV, str(params_trace(root)))
        sandbox.dvc(root, "repro")
    sandbox.commit(root, "pipeline run")
    return root


def params_trace(trained: Path) -> Path:
    """Where `trained_project`'s stages recorded the params keys they read (outside the repository)."""
    return trained.parent / "params_read.jsonl"


def copy_trained_project(trained: Path, destination: Path) -> Path:
    """A working copy of `trained_project` (files, git history, DVC cache, MLflow store) to change freely.
    The store records absolute artifact locations: artifacts of runs made in the copy land in the original's
    `mlartifacts/`, which no test reads by listing."""
    import shutil

    shutil.copytree(trained, destination, symlinks=True)
    return destination
