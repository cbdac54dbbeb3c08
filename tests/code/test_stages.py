"""Stage scripts as DVC runs them: a subprocess, a clear one-line error and exit code 2 on bad input."""

from __future__ import annotations

import io
import itertools
import os
import shlex
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


def _stages_reading_prepared_data() -> dict[str, list[str]]:
    """{stage: its dvc.yaml command, split} for every stage that reads the prepared data (`--data data/prepared`)."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: shlex.split(stage["cmd"]) for name, stage in stages.items()
            if "--data data/prepared" in " ".join(stage["cmd"].split())}


READING_PREPARED = _stages_reading_prepared_data()


def test_every_training_and_evaluation_stage_reads_the_prepared_data():
    # The parametrization below follows dvc.yaml; this says it did not silently shrink.
    assert {"preview", "train_scratch", "extract_features", "find_duplicates", "train_transfer", "evaluate",
            "analyze"} <= set(READING_PREPARED)


@pytest.mark.parametrize("stage", sorted(READING_PREPARED))
def test_missing_prepared_data_is_named_with_the_stage_to_run_before_importing_tensorflow(tmp_path, stage):
    # A TensorFlow that cannot be imported: the stage must name the missing input without reaching it (the
    # imports cost 8-13 s of CPU before a stage could say that its input is absent). Every path dvc.yaml gives
    # the stage is absent; the prepared data is checked first, by stage_runner, whatever else is missing.
    shadow = tmp_path / "shadow" / "tensorflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the stage imported TensorFlow')\n")
    command = READING_PREPARED[stage]
    assert command[:3] == ["python", "-m", f"stages.{stage}"], command
    arguments = [str(tmp_path / "absent" / word) if previous.startswith("--") else word
                 for previous, word in itertools.pairwise(command[2:])]
    result = subprocess.run([sys.executable, "-m", f"stages.{stage}", *arguments], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=False, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: {tmp_path / 'absent' / 'data/prepared' / 'meta.json'} not found; "
                                     "run the preprocess stage first (dvc repro preprocess)"), result.stderr
