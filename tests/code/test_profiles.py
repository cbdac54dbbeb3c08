"""Every params profile in profiles/ turns into `dvc exp run -S` arguments that params.yaml's schema accepts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imgclf.pipeline import PROJECT_ROOT

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
