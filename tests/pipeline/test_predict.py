"""`imgclf predict` on the models of a real pipeline run: folders with bad files, every output format, MLflow URIs,
score bars, and predictions equal to the Keras model's on the preprocessed pixels."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from imgclf import model_io
from imgclf.data import images
from imgclf.serving import predict, serving
from imgclf.tracking import runs

CORRUPT = "corrupt.png"


@pytest.fixture
def cli_env(monkeypatch):
    """What the predict command sets for itself, undone after the test; the MLflow tracking URI restored."""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    previous = mlflow.get_tracking_uri()
    yield monkeypatch
    mlflow.set_tracking_uri(previous)


def write_images(folder: Path, data_images: list[Path]) -> Path:
    """Two real data images, a grey one, an RGBA one (another size: the resize policy runs), a JPEG in a
    subfolder, a corrupt `.png`, and files that are no images (skipped when the folder is walked)."""
    folder.mkdir(parents=True)
    for number, source in enumerate(data_images):
        shutil.copy(source, folder / f"data_{number}.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 24), dtype=np.uint8), mode="L").save(folder / "grey.png")
    (folder / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (20, 48, 4), dtype=np.uint8), mode="RGBA").save(folder / "nested" / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "nested" / "deeper" / "photo.jpg")
    (folder / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden").mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / ".hidden" / "thumb.png")
    return folder


@pytest.fixture(scope="module")
def image_folder(trained_project, tmp_path_factory) -> Path:
    data_images = sorted((trained_project / "data" / "raw").rglob("*.png"))[:2]
    return write_images(tmp_path_factory.mktemp("predict") / "images", data_images)


def expected_files(folder: Path) -> list[str]:
    return [str(folder / name) for name in (CORRUPT, "data_0.png", "data_1.png", "grey.png",
                                            "nested/deeper/photo.jpg", "nested/rgba.png")]


@pytest.mark.integration
@pytest.mark.slow
def test_folder_with_a_corrupt_file_in_every_format(run_cli, trained_project, image_folder, tmp_path, capsys, cli_env):
    model = trained_project / "models" / "scratch" / "model.keras"
    meta = trained_project / "data" / "prepared" / "meta.json"
    class_names = json.loads(meta.read_text())["class_names"]
    outputs = {}
    for output_format in predict.FORMATS:
        out = tmp_path / f"predictions.{output_format}"
        code = run_cli("predict", str(image_folder), "--model", str(model), "--meta", str(meta),
                       "--format", output_format, "--output", str(out), "--top-k", "2")
        assert code == 1, "one file could not be read"
        stderr = capsys.readouterr().err
        assert f"{image_folder / CORRUPT}: not a readable image" in stderr
        assert "classified 5 of 6 files" in stderr
        outputs[output_format] = out.read_text()

    rows = json.loads(outputs["json"])
    assert [row["file"] for row in rows] == expected_files(image_folder), "walked recursively, non-images skipped"
    bad, good = rows[0], rows[1:]
    assert bad["error"].startswith("not a readable image") and bad["predicted_class"] is None and bad["top_k"] == []
    for row in good:
        assert row["error"] is None and row["predicted_class"] in class_names
        assert len(row["top_k"]) == 2 and row["top_k"][0] == {"class": row["predicted_class"],
                                                              "probability": row["probability"]}
        assert row["top_k"][0]["probability"] >= row["top_k"][1]["probability"]

    table = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert list(table[0]) == ["file", "predicted_class", "probability", "class_1", "probability_1", "class_2",
                              "probability_2", "error"]
    assert [row["file"] for row in table] == expected_files(image_folder)
    assert table[0]["error"].startswith("not a readable image") and table[0]["predicted_class"] == ""
    for json_row, csv_row in zip(good, table[1:], strict=True):
        assert csv_row["predicted_class"] == json_row["predicted_class"] and csv_row["error"] == ""
        assert float(csv_row["probability"]) == pytest.approx(json_row["probability"])

    lines = outputs["table"].splitlines()
    assert lines[0].split() == ["file", "prediction", "prob", "top", "classes"] and len(lines) == 7
    assert lines[1].startswith(str(image_folder / CORRUPT)) and "ERROR" in lines[1]
    for line, row in zip(lines[2:], good, strict=True):
        assert line.startswith(row["file"]) and f"{row['predicted_class']} {row['probability']:.3f}" in line


@pytest.mark.integration
@pytest.mark.slow
def test_run_uri_matches_the_keras_model_on_preprocessed_pixels(run_cli, trained_project, image_folder, tmp_path,
                                                                capsys, cli_env):
    """`--model runs:/<id>/model` (downloaded from the MLflow store), stdout, all classes when --top-k is larger
    than the class count, and one score-bar figure per classified image."""
    # The scratch model: small to download and load (the transfer model is served in test_serving.py).
    run_id = runs.read_run(trained_project / "models" / "scratch")["run_id"]
    cli_env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained_project / 'mlflow.db'}")
    bars = tmp_path / "bars"
    code = run_cli("predict", str(image_folder), "--model", f"runs:/{run_id}/model", "--format", "json",
                   "--top-k", "50", "--score-bars", str(bars))
    assert code == 1
    rows = json.loads(capsys.readouterr().out)

    meta = json.loads((trained_project / "data" / "prepared" / "meta.json").read_text())
    good = [row for row in rows if row["error"] is None]
    pixels = np.stack([images.decode_file(Path(row["file"]), image_size=meta["image_size"], resize=meta["resize"],
                                          channels=meta["channels"]) for row in good]).astype(np.float32)
    keras_model = model_io.load_model(trained_project / "models" / "scratch" / "model.keras")
    expected = keras_model.predict(pixels, verbose=0)
    for row, probabilities in zip(good, expected, strict=True):
        assert len(row["top_k"]) == meta["num_classes"], "--top-k is capped at the class count"
        got = {entry["class"]: entry["probability"] for entry in row["top_k"]}
        np.testing.assert_allclose([got[name] for name in meta["class_names"]], probabilities, rtol=1e-5, atol=1e-6)
        assert row["predicted_class"] == meta["class_names"][int(np.argmax(probabilities))]

    written = sorted(path.name for path in bars.iterdir())
    assert written == [predict.score_bar_name(position, row["file"]) for position, row in enumerate(rows)
                       if row["error"] is None]
    for name in written:
        with Image.open(bars / name) as figure:
            assert figure.format == "PNG" and figure.width > 200 and figure.height > 50


@pytest.mark.integration
@pytest.mark.slow
def test_registered_alias_in_the_project_store(run_cli, trained_project, image_folder, tmp_path, capsys, cli_env):
    """`models:/<name>@champion`, registered as the evaluate stage does, found in ./mlflow.db when
    MLFLOW_TRACKING_URI is unset (a copy of the store: the trained project stays untouched)."""
    shutil.copy(trained_project / "mlflow.db", tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = runs.read_run(trained_project / "models" / "scratch")["run_id"]
    version = mlflow.register_model(f"runs:/{run_id}/model", "imgclf-scratch")
    mlflow.MlflowClient().set_registered_model_alias("imgclf-scratch", "champion", version.version)
    cli_env.delenv("MLFLOW_TRACKING_URI", raising=False)
    cli_env.chdir(tmp_path)
    assert run_cli("predict", str(image_folder / "data_0.png"), "--model", "models:/imgclf-scratch@champion",
                   "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    class_names = json.loads((trained_project / "data" / "prepared" / "meta.json").read_text())["class_names"]
    assert len(rows) == 1 and rows[0]["predicted_class"] in class_names and rows[0]["error"] == ""


@pytest.mark.integration
@pytest.mark.slow
def test_usage_errors_exit_2(run_cli, trained_project, image_folder, tmp_path, capsys, cli_env):
    model = trained_project / "models" / "scratch" / "model.keras"
    cli_env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained_project / 'mlflow.db'}")
    cases = {
        (str(tmp_path / "missing.keras"),): "not found; give a .keras file or an MLflow model URI",
        (str(model), "--meta", str(tmp_path / "meta.json")): "pass --meta PATH",
        (str(image_folder / "data_0.png"), "--meta", str(trained_project / "data/prepared/meta.json")):
            "is not a Keras model file",
        ("runs:/0123456789abcdef0123456789abcdef/model",): "cannot load the MLflow model",
        ("models:/no-such-model@champion",): "cannot load the MLflow model",
    }
    for arguments, message in cases.items():
        out = tmp_path / "out.json"
        assert run_cli("predict", str(image_folder), "--output", str(out), "--model", *arguments) == 2, arguments
        assert message in capsys.readouterr().err, arguments
        assert not out.exists(), "nothing written on a usage error"

    cli_env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    assert run_cli("predict", str(image_folder), "--model", "models:/imgclf-transfer@champion") == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "absent.db").exists()
    (tmp_path / "empty").mkdir()
    assert run_cli("predict", str(tmp_path / "empty"), "--model", str(model)) == 2
    assert "no image files in" in capsys.readouterr().err


def test_find_images_keeps_named_files_and_walks_folders(tmp_path):
    folder = write_images(tmp_path / "images", [])
    missing = tmp_path / "missing.png"
    found = predict.find_images([missing, folder])
    assert found[0] == missing, "a named file is kept, so its error is reported"
    assert [path.relative_to(folder).as_posix() for path in found[1:]] == [
        CORRUPT, "grey.png", "nested/deeper/photo.jpg", "nested/rgba.png"]


def test_top_classes_and_renderers():
    names = ["cat", "dog", "bird"]
    top = predict.top_classes(np.array([0.2, 0.5, 0.3]), names, 2)
    assert top == (("dog", 0.5), ("bird", 0.3))
    rows = [predict.Prediction("a.png", top=top), predict.Prediction("b.png", error="not a readable image (x)")]
    assert json.loads(predict.render_json(rows))[1] == {"file": "b.png", "predicted_class": None, "probability": None,
                                                       "top_k": [], "error": "not a readable image (x)"}
    assert predict.render_csv(rows, top_k=2).splitlines() == [
        "file,predicted_class,probability,class_1,probability_1,class_2,probability_2,error",
        "a.png,dog,0.5,dog,0.5,bird,0.3,", "b.png,,,,,,,not a readable image (x)"]
    assert "ERROR" in predict.render_table(rows).splitlines()[2]


def test_model_uri_or_path():
    for uri in ("runs:/abc/model", "models:/imgclf-transfer@champion", "models:/m-123", "s3://bucket/model"):
        assert serving.is_model_uri(uri), uri
    for path in ("models/transfer/model.keras", "/abs/model.keras", "C:/models/model.keras", "model.keras"):
        assert not serving.is_model_uri(path), path
