"""Quiet by default: no warning a user cannot act on in the stage logs; IMGCLF_LOG_LEVEL=DEBUG brings detail back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import keras
import pytest

from imgclf import artifacts
from imgclf.config import params_from_dict
from imgclf.data import preprocess, sources, tfdata
from imgclf.entry_points import PROJECT_ROOT


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


QUIET_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_LOGGING_LEVEL",
                   "IMGCLF_LOG_LEVEL")


def clean_environment(extra: dict[str, str]) -> dict[str, str]:
    return {**{key: value for key, value in os.environ.items() if key not in QUIET_VARIABLES}, **extra}


def stage_environment(extra: dict[str, str], argv: tuple[str, ...] = ()) -> dict[str, str | bool | None]:
    """os.environ as a stage sees it after `import stages`, with `argv` on its command line, and whether TensorFlow
    will load with its start-up lines filtered (`filtered`)."""
    code = ("import json, os, sys; sys.argv[1:] = json.loads(sys.argv[1]); import stages; "
            f"state = {{k: os.environ.get(k) for k in {QUIET_VARIABLES[:-1]!r}}}; "
            "state['filtered'] = any(type(f).__name__ == '_TensorFlowStartUp' for f in sys.meta_path); "
            "print(json.dumps(state))")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], cwd=PROJECT_ROOT,
                            env=clean_environment(extra), capture_output=True, text=True, check=True, timeout=60)
    return json.loads(result.stdout)


def test_stages_are_quiet_unless_debug_or_verbose():
    assert stage_environment({}) == {"TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                                     "MLFLOW_LOGGING_LEVEL": "WARNING", "filtered": True}
    everything = {"TF_CPP_MIN_LOG_LEVEL": None, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": None,
                  "MLFLOW_LOGGING_LEVEL": None, "filtered": False}
    assert stage_environment({"IMGCLF_LOG_LEVEL": "DEBUG"}) == everything
    assert stage_environment({}, argv=("--out", "x", "-v")) == everything
    assert stage_environment({}, argv=("--verbose",)) == everything


# What TensorFlow 2.21 writes to stderr while it loads, at any TF_CPP_MIN_LOG_LEVEL, on a CPU where oneDNN is on:
# the second pair comes from the profiler plugin's own copy of Abseil. The E line, a warnings line and a line of
# the importing code's own are made up: all three must stay.
TENSORFLOW_LOADING = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796517736.035379    9552 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders. To turn "
    b"them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
    b"/x/keras/src/export.py:9: UserWarning: something the user should see\n"
    b"W0000 00:00:1796517736.100000    9552 cuda_dnn.cc:8] a warning\n"
    b"E0000 00:00:1796517736.200000    9552 cuda_dnn.cc:9] an error\n"
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796517737.950723    9552 port.cc:153] oneDNN custom operations are on.\n"
    b"I0000 is not a log line of Abseil's\n"
)


def test_tensorflow_start_up_lines_follow_tf_cpp_min_log_level():
    from imgclf import stage_runner

    def severities(level: int) -> list[str]:
        lines = stage_runner.tensorflow_start_up_lines(TENSORFLOW_LOADING, level).splitlines()
        return [line[:5].decode() for line in lines]

    assert stage_runner.tensorflow_start_up_lines(TENSORFLOW_LOADING, 0) == TENSORFLOW_LOADING  # everything, as TF says
    assert severities(1) == ["/x/ke", "W0000", "E0000", "I0000"]
    assert severities(2) == ["/x/ke", "E0000", "I0000"]  # the default: no banner, errors and the rest kept
    assert severities(3) == ["/x/ke", "I0000"]


# The lines of a `dvc repro` that are the project's own: its log lines (stage_runner.LOG_FORMAT), DVC's progress
# through the stages and its closing hints, and Keras' line per epoch that the training stages ask for
# (progress.keras_verbose).
PROJECT_LINES = re.compile("|".join((
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) (imgclf|stages)[\w.]*: .*",
    r"Running stage '\w+':", r"> python -m stages\.\w+ .*", r"(Generating|Updating) lock file 'dvc\.lock'",
    r"To track the changes with git, run:", r"\tgit add .*", r"To enable auto staging, run:",
    r"\tdvc config core\.autostage true", r"Use `dvc push` to send your updates to remote storage\.",
    r"Epoch \d+/\d+", r"\d+/\d+ - \d+m?s - \d+m?s/step - .*",
)))
# Printed by mlflow.register_model (a print, not a logger MLFLOW_LOGGING_LEVEL quiets) when the evaluate stage
# registers a new model version; the stage's own `registry: ...` line says the same after them.
MLFLOW_REGISTRY_LINES = re.compile(r"Successfully registered model 'imgclf-\w+'\.|Created version '\d+' of model "
                                   r"'imgclf-\w+'\.")


@pytest.mark.integration
@pytest.mark.slow
def test_a_pipeline_runs_log_holds_only_the_projects_lines(repro_log):
    """No TensorFlow start-up banner, no MLflow database or signature notes, no DVC warning: a user reads only
    what the project says. The count of the other lines must be zero."""
    if os.environ.get("IMGCLF_LOG_LEVEL", "").upper() == "DEBUG":
        pytest.skip("IMGCLF_LOG_LEVEL=DEBUG: the pipeline run was verbose on purpose")
    others = [line for line in repro_log.splitlines()
              if line.strip() and not PROJECT_LINES.fullmatch(line) and not MLFLOW_REGISTRY_LINES.fullmatch(line)]
    assert len(others) == 0, "lines of `dvc repro` that are not the project's own:\n" + "\n".join(others)
    assert "Running stage 'train_scratch':" in repro_log and " INFO imgclf.evaluation.evaluate: " in repro_log


def _debug_lines(command: list[str], cwd) -> list[str]:
    result = subprocess.run(command, cwd=cwd, env=clean_environment({"PYTHONPATH": str(PROJECT_ROOT)}),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if " DEBUG " in line]


@pytest.mark.integration
def test_verbose_flag_shows_debug_lines_the_default_hides(tmp_path):
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    stage = [sys.executable, "-m", "stages.check_params", "--out", "checked", "--backbone", "backbone.json"]
    assert _debug_lines(stage, tmp_path) == []
    assert any("DEBUG imgclf.config: params from" in line for line in _debug_lines([*stage, "-v"], tmp_path))
    for verbose in (["-v", "check-params"], ["check-params", "--verbose"]):
        assert any("DEBUG imgclf.config: params from" in line
                   for line in _debug_lines([sys.executable, "-m", "imgclf", *verbose], tmp_path)), verbose
    assert _debug_lines([sys.executable, "-m", "imgclf", "check-params"], tmp_path) == []
