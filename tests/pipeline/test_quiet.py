"""Quiet by default: no warning a user cannot act on in the stage logs; IMGCLF_LOG_LEVEL=DEBUG brings detail back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import keras

from imgclf import artifacts
from imgclf.config import params_from_dict
from imgclf.data import preprocess, sources, tfdata
from imgclf.pipeline import PROJECT_ROOT


def test_validation_evaluates_without_running_out_of_data(tmp_path, params_dict, write_image_folder):
    folder = write_image_folder(tmp_path / "photos", {"cat": 30, "dog": 30})
    params_dict["data"].update(source="image_folder", path=str(folder))
    params = params_from_dict(params_dict)
    sources.fetch_source(source="image_folder", path=str(folder), sha256=None, raw_dir=tmp_path / "raw",
                         download_dir=tmp_path / "downloads", seed=params.seed)
    preprocess.run(params, raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared", workers=1)
    meta = artifacts.read_prepared_meta(tmp_path / "prepared")
    validation = tfdata.make_dataset(tmp_path / "prepared", "val", image_shape=meta.image_shape, num_classes=2,
                                     batch_size=4, example_count=meta.counts["val"])
    model = keras.Sequential([keras.Input(meta.image_shape), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(loss="categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras' "Your input ran out of data" is a UserWarning
        for _ in range(2):
            model.evaluate(validation, verbose=0)


QUIET_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "IMGCLF_LOG_LEVEL")


def clean_environment(extra: dict[str, str]) -> dict[str, str]:
    return {**{key: value for key, value in os.environ.items() if key not in QUIET_VARIABLES}, **extra}


def stage_environment(extra: dict[str, str], argv: tuple[str, ...] = ()) -> dict[str, str]:
    """os.environ as a stage sees it after `import stages`, with `argv` on its command line."""
    code = ("import json, os, sys; sys.argv[1:] = json.loads(sys.argv[1]); import stages; "
            "print(json.dumps({k: os.environ.get(k) for k in ('TF_CPP_MIN_LOG_LEVEL', "
            "'MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR')}))")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], cwd=PROJECT_ROOT,
                            env=clean_environment(extra), capture_output=True, text=True, check=True, timeout=60)
    return json.loads(result.stdout)


def test_stages_are_quiet_unless_debug_or_verbose():
    assert stage_environment({}) == {"TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    everything = {"TF_CPP_MIN_LOG_LEVEL": None, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": None}
    assert stage_environment({"IMGCLF_LOG_LEVEL": "DEBUG"}) == everything
    assert stage_environment({}, argv=("--out", "x", "-v")) == everything
    assert stage_environment({}, argv=("--verbose",)) == everything


def _debug_lines(command: list[str], cwd) -> list[str]:
    result = subprocess.run(command, cwd=cwd, env=clean_environment({"PYTHONPATH": str(PROJECT_ROOT)}),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if " DEBUG " in line]


def test_verbose_flag_shows_debug_lines_the_default_hides(tmp_path):
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    stage = [sys.executable, "-m", "stages.check_params", "--input-link", "link", "--out", "checked"]
    assert _debug_lines(stage, tmp_path) == []
    assert any("DEBUG imgclf.config: params from" in line for line in _debug_lines([*stage, "-v"], tmp_path))
    for verbose in (["-v", "check-params"], ["check-params", "--verbose"]):
        assert any("DEBUG imgclf.config: params from" in line
                   for line in _debug_lines([sys.executable, "-m", "imgclf", *verbose], tmp_path)), verbose
    assert _debug_lines([sys.executable, "-m", "imgclf", "check-params"], tmp_path) == []
