"""Every params profile in profiles/ turns into `dvc exp run -S` arguments that params.yaml's schema accepts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from imgclf import smoke_copy
from imgclf.config import params_from_dict
from imgclf.entry_points import PROJECT_ROOT

PROFILES = sorted((PROJECT_ROOT / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES, ids=[path.stem for path in PROFILES])
def test_profile_gives_valid_exp_run_arguments(profile):
    result = subprocess.run([sys.executable, "-m", "imgclf", "exp-args", str(profile.relative_to(PROJECT_ROOT))],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "-S", result.stdout


def test_own_photos_profile_keeps_photos_at_the_backbone_input_size():
    result = subprocess.run([sys.executable, "-m", "imgclf", "exp-args", "profiles/own_photos.yaml"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=120)
    assert {"preprocess.image_size=96", "transfer.input_size=96"} <= set(result.stdout.split())


def test_own_photos_profile_gives_a_scratch_model_no_larger_than_the_write_ups(params_dict):
    # The seed CNN's Dense(256) takes the flattened last feature map: at 96 px with CIFAR's two poolings it had
    # 19,040,900 parameters, a 76.2 MB file stored in the workspace, DVC's cache and MLflow.
    from imgclf.training import scratch_model

    profile = yaml.safe_load((PROJECT_ROOT / "profiles" / "own_photos.yaml").read_text(encoding="utf-8"))
    params = params_from_dict(smoke_copy.merge(params_dict, profile))
    side = params.preprocess.image_size
    model = scratch_model.build_scratch_model(params.scratch, input_shape=(side, side, 3), num_classes=10)
    assert model.count_params() <= 2_264_458, "the write-up's CNN on CIFAR-10 (32 px, 10 classes)"
