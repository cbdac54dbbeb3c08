"""Stage scripts as DVC runs them: a subprocess, a clear one-line error and exit code 2 on bad input."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest
import yaml

from imgclf.entry_points import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.duration(seconds=9)]  # about, under make test: orders the modules


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


def test_missing_input_names_the_stage_to_run(tmp_path):
    result = _stage("train_scratch", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "model"))
    assert result.returncode == 2 and "dvc repro" in result.stderr, result.stderr
