"""Stage scripts as DVC runs them: a subprocess, a clear one-line error and exit code 2 on bad input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

from imgclf.entry_points import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.duration(seconds=3)]  # about, under make test: orders the modules


def _stage(name: str, *args: str, cwd=PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, capture_output=True,
                          text=True, check=False, timeout=300)


def test_typo_in_params_stops_the_stage_naming_key_and_file(tmp_path, params_dict):
    params_dict["data"]["max_per_clas"] = 100
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_dict))
    result = _stage("download", "--params", str(params), "--out", str(tmp_path / "raw"),
                    "--download-dir", str(tmp_path / "downloads"))
    assert result.returncode == 2
    assert "unknown key 'data.max_per_clas'" in result.stderr and str(params) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "raw").exists()


def test_malicious_archive_is_refused_by_the_download_stage(tmp_path, params_dict):
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("photos/cats/1.png", "../../escape.png"):
            member = tarfile.TarInfo(name)
            member.size = 3
            tar.addfile(member, io.BytesIO(b"abc"))
    params_dict["data"].update(source="image_folder", path=str(archive))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_dict))
    result = _stage("download", "--params", str(params), "--out", str(tmp_path / "work" / "raw"),
                    "--download-dir", str(tmp_path / "downloads"))
    assert result.returncode == 2 and "../../escape.png" in result.stderr, result.stderr
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "work" / "raw").exists()


@pytest.mark.parametrize("stage", ["train_scratch", "train_transfer"])
def test_missing_input_names_the_stage_to_run_before_importing_tensorflow(tmp_path, stage):
    # A TensorFlow that cannot be imported: the stage must name the missing input without reaching it (the
    # imports cost 8-13 s of CPU before a training stage could say that its input is absent).
    shadow = tmp_path / "shadow" / "tensorflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the stage imported TensorFlow')\n")
    extra = ("--features", str(tmp_path / "features")) if stage == "train_transfer" else ()
    result = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--data", str(tmp_path / "absent"), *extra,
                             "--out", str(tmp_path / "model")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            check=False, timeout=300, env={**os.environ, "PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 2 and "dvc repro preprocess" in result.stderr, result.stderr
    assert "TensorFlow" not in result.stderr
