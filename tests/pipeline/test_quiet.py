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


def stage_environment(extra: dict[str, str]) -> dict[str, str]:
    """os.environ as a stage sees it after `import stages`."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "IMGCLF_LOG_LEVEL")}
    code = ("import json, os, stages; print(json.dumps({k: os.environ.get(k) for k in "
            "('TF_CPP_MIN_LOG_LEVEL', 'MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR')}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env={**env, **extra},
                            capture_output=True, text=True, check=True, timeout=60)
    return json.loads(result.stdout)


def test_stages_are_quiet_unless_debug():
    assert stage_environment({}) == {"TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    assert stage_environment({"IMGCLF_LOG_LEVEL": "DEBUG"}) == {"TF_CPP_MIN_LOG_LEVEL": None,
                                                                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": None}
