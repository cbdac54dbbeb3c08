"""The logged MLflow model of a real pipeline run: a pyfunc image classifier that `mlflow models serve` runs on
base64 images, and the TensorFlow SavedModel export for TF Serving."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgclf import artifacts, model_io
from imgclf.data import images
from imgclf.entry_points import PROJECT_ROOT
from imgclf.tracking import packaging, runs

SERVER_START_SECONDS = 180  # importing TensorFlow and loading the model on a busy 2-core machine


def store_uri(project: Path) -> str:
    return f"sqlite:///{project / 'mlflow.db'}"


def data_images(project: Path, count: int) -> list[Path]:
    return sorted((project / "data" / "raw").rglob("*.png"))[:count]


def http(url: str, payload: dict | None = None, timeout: float = 60) -> tuple[int, str]:
    """GET (or POST `payload` as JSON) on 127.0.0.1; the status and body, error statuses included."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def manual_serve_script(page: Path, port: int) -> str:
    """The manual's `mlflow models serve` command as printed in `page` (from `CHAMPION=` to its last continued
    line), on `port` instead of the page's 5001."""
    lines = page.read_text().splitlines()
    first = next(index for index, line in enumerate(lines) if line.startswith("CHAMPION="))
    last = first
    while lines[last].endswith("\\"):
        last += 1
    last += 1
    while lines[last].endswith("\\"):
        last += 1
    script = "\n".join(lines[first:last + 1])
    assert "mlflow models serve" in script and " -p 5001" in script, script
    return script.replace(" -p 5001", f" -p {port}")


@pytest.fixture
def manual_model_server(free_port, running_server):
    """`manual_model_server(project, workdir=...)`: the manual's serve command (docs/serving.md), run by bash in
    `project` as a fresh shell would (no activated environment: PATH holds only the system directories), with the
    project's `.venv` beside it; a context manager yielding its base URL once /ping answers.
    The server is always stopped."""
    @contextlib.contextmanager
    def serve(project: Path, *, workdir: Path) -> Iterator[str]:
        venv = Path(sys.executable).parent.parent
        if not (project / ".venv").exists():
            (project / ".venv").symlink_to(venv, target_is_directory=True)
        port = free_port()
        script = manual_serve_script(PROJECT_ROOT / "docs" / "serving.md", port)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(workdir)),
               "LANG": os.environ.get("LANG", "C.UTF-8")}
        url = f"http://127.0.0.1:{port}"
        with running_server(["bash", "-c", script], ready_url=f"{url}/ping", cwd=project, env=env,
                            log_path=workdir / "server.log", start_seconds=SERVER_START_SECONDS):
            yield url

    return serve


@pytest.mark.integration
@pytest.mark.slow
def test_each_training_run_logs_one_pyfunc_image_classifier(trained_project):
    client = mlflow.MlflowClient(tracking_uri=store_uri(trained_project))
    meta = json.loads((trained_project / "data" / "prepared" / "meta.json").read_text())
    for name in ("scratch", "transfer"):
        run = runs.read_run(trained_project / "models" / name)
        logged = client.search_logged_models([run["experiment_id"]], filter_string=f"source_run_id = '{run['run_id']}'")
        assert [model.name for model in logged] == ["model"], "logged once per run, as runs:/<run_id>/model"
        local = Path(logged[0].artifact_location.removeprefix("file://"))
        info = mlflow.models.Model.load(str(local))
        assert info.signature.inputs.input_names() == ["image"]
        assert info.signature.inputs.input_types()[0] == mlflow.types.DataType.string
        assert info.signature.outputs.input_names() == ["predicted_class", "probability",
                                                        *(f"probability_{c}" for c in meta["class_names"])]
        assert json.loads((local / "artifacts" / artifacts.PREPROCESSING_FILE).read_text()) == {
            key: meta[key] for key in packaging.PREPROCESSING_KEYS}
        assert (local / "artifacts" / "model.keras").is_file()
        assert (local / "code" / "imgclf" / "serving" / "serving.py").is_file(), "the package is logged with the model"
        requirements = (local / "requirements.txt").read_text()
        for package in ("mlflow==", "keras==", "tensorflow", "pillow==", "numpy==", "pyyaml=="):
            assert package in requirements.lower(), package
        example = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]
        assert example["columns"] == ["image"]
        with Image.open(io.BytesIO(base64.b64decode(example["data"][0][0]))) as image:
            assert image.format == "PNG" and image.size == (meta["image_size"], meta["image_size"])


@pytest.mark.integration
@pytest.mark.slow
def test_readme_serve_command_classifies_base64_images(trained_project, tmp_path, copy_trained_project,
                                                       manual_model_server):
    project = copy_trained_project(tmp_path / "project")
    class_names = json.loads((trained_project / "data" / "prepared" / "meta.json").read_text())["class_names"]
    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(photo, "JPEG")
    encoded = [base64.b64encode(data_images(trained_project, 1)[0].read_bytes()).decode(),
               base64.b64encode(photo.getvalue()).decode()]
    with manual_model_server(project, workdir=tmp_path) as url:
        status, body = http(f"{url}/invocations",
                            {"dataframe_split": {"columns": ["image"], "data": [[text] for text in encoded]}})
        assert status == 200, body
        predictions = pd.DataFrame(json.loads(body)["predictions"])
        bad_status, bad_body = http(f"{url}/invocations",
                                    {"dataframe_split": {"columns": ["image"], "data": [[encoded[0]], ["bm90IGFu"]]}})
    assert len(predictions) == 2
    columns = packaging.probability_columns(class_names)
    assert list(predictions.columns) == ["predicted_class", "probability", *columns]
    np.testing.assert_allclose(predictions[columns].sum(axis=1), 1.0, atol=1e-5)
    for _, row in predictions.iterrows():
        assert row["predicted_class"] in class_names
        assert row["probability"] == pytest.approx(row[columns].max())
        assert row[f"probability_{row['predicted_class']}"] == pytest.approx(row["probability"])
    assert bad_status == 400 and "row 1: not a readable image" in json.loads(bad_body)["message"]


@pytest.mark.integration
@pytest.mark.slow
def test_export_saved_model_serves_what_the_keras_model_predicts(trained_project, tmp_path, capsys, monkeypatch,
                                                                  run_cli):
    import tensorflow as tf

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    model = trained_project / "models" / "scratch" / "model.keras"
    meta_path = trained_project / "data" / "prepared" / "meta.json"
    out = tmp_path / "serving" / "imgclf" / "1"
    out.mkdir(parents=True)
    (out / "saved_model.pb").write_text("an earlier export")  # --force replaces only a SavedModel folder
    (out / "stale.txt").write_text("a file of the earlier export")
    arguments = ["export", "--model", str(model), "--meta", str(meta_path), "--out", str(out)]
    assert run_cli(*arguments) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err and (out / "stale.txt").exists()

    assert run_cli(*arguments, "--force") == 0
    assert not (out / "stale.txt").exists() and (out / "saved_model.pb").is_file()
    assert [path.name for path in out.parent.iterdir()] == ["1"], "no temporary directory left behind"
    meta = json.loads(meta_path.read_text())
    assert json.loads((out / "assets.extra" / artifacts.PREPROCESSING_FILE).read_text())["class_names"] == \
        meta["class_names"]

    pixels = np.stack([images.decode_file(path, image_size=meta["image_size"], resize=meta["resize"],
                                          channels=meta["channels"]) for path in data_images(trained_project, 3)])
    pixels = pixels.astype(np.float32)
    expected = model_io.load_model(model).predict(pixels, verbose=0)
    saved_model = tf.saved_model.load(str(out))  # held: its variables die with it
    served = saved_model.serve(tf.constant(pixels)).numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def test_prediction_frame_and_base64():
    frame = packaging.prediction_frame(np.array([[0.1, 0.9], [0.7, 0.3]]), ["cat", "dog"])
    assert frame.to_dict("list") == {"predicted_class": ["dog", "cat"], "probability": [0.9, 0.7],
                                     "probability_cat": [0.1, 0.7], "probability_dog": [0.9, 0.3]}
    png = packaging.encode_png(np.full((4, 4, 3), 200, dtype=np.uint8))
    text = base64.b64encode(png).decode()
    assert packaging.decode_base64(text) == png
    assert packaging.decode_base64(f"data:image/png;base64,{text[:10]}\n{text[10:]}") == png
    with pytest.raises(packaging.InvalidImageError, match="not valid base64"):
        packaging.decode_base64("not base64!")
