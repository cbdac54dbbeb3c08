"""Hostile and careless inputs, round two (issue 26, rows 6, 12, 13, 14, 17): each is one `error:` line and exit 2
(Ctrl-C: one line and 130), or a skip listed in skipped.csv; nothing half-written, nothing outside touched.

Serving bounds (pixels per image, images and bytes per request, a model file's description), outputs that cannot
be written, params and meta.json that are not what they claim, archive members and folder trees no file system or
walk can hold, files that look like images but are not decoded here, and the shell quoting of `exp-args`.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shlex
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclf import artifacts, stage_runner
from imgclf.data import images, preprocess, sources
from imgclf.entry_points import PROJECT_ROOT
from imgclf.errors import DataSourceError

pytestmark = pytest.mark.duration(seconds=25)  # about, under make test: orders the modules


def _fetch_folder(tmp_path: Path, path: Path) -> dict:
    return sources.fetch_source(source="image_folder", path=str(path), sha256=None, raw_dir=tmp_path / "raw",
                                download_dir=tmp_path / "downloads", seed=0)


def _one_error_line(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------- 6. serving bounds, a model file's description

def _png_of_zeros(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of `width` x `height` black pixels, compressed row by row (13000^2: 164 KB)."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def served_model(tiny_model):
    """The logged pyfunc class, loaded from the artifacts `mlflow models serve` hands it."""
    import mlflow

    from imgclf.tracking import packaging

    model_path, meta = tiny_model
    served = packaging.ImageClassifier()
    served.load_context(mlflow.pyfunc.PythonModelContext(
        artifacts={packaging.MODEL_ARTIFACT: str(model_path), packaging.PREPROCESSING_ARTIFACT: str(meta)},
        model_config=None))
    return served


def _request(served, encoded: list[str]):
    import mlflow
    import pandas as pd

    from imgclf.tracking import packaging

    with pytest.raises(mlflow.exceptions.MlflowException) as caught:
        served.predict(None, pd.DataFrame({packaging.IMAGE_COLUMN: encoded}))
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400
    return caught.value.message


def test_a_served_png_of_13000_squared_pixels_is_refused_from_its_header(served_model):
    bomb = _png_of_zeros(13000, 13000)
    assert len(bomb) < 200_000
    small = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(small, "PNG")
    encoded = [base64.b64encode(data).decode() for data in (small.getvalue(), bomb)]
    started = time.process_time()
    message = _request(served_model, encoded)
    assert time.process_time() - started < 1.0, "decoded before it was refused"
    assert "row 1: not a readable image (13000x13000 pixels, past the limit of 16,000,000" in message
    assert "row 0" not in message


def test_a_request_of_too_many_images_is_refused_before_any_is_decoded(served_model):
    import pandas as pd

    from imgclf.tracking import packaging

    small = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(small, "PNG")
    encoded = [base64.b64encode(small.getvalue()).decode()] * 200  # docs/serving.md: at most 64 images a request
    assert _request(served_model, encoded).startswith("cannot classify: 200 images and 0.0 MB of base64 in one "
                                                      "request, past the limits of 64 images")
    assert len(served_model.predict(None, pd.DataFrame({packaging.IMAGE_COLUMN: encoded[:2]}))) == 2


def test_a_keras_file_with_a_bloated_config_is_refused_before_keras_reads_it(tmp_path, tiny_model, capsys, run_cli,
                                                                              write_image_folder):
    """A valid model whose config.json is padded to 17 MB: Keras would read and parse it all (a 1 GB one took 2.8 GB
    of RAM); the zip directory says its size first."""
    model_path, meta = tiny_model
    bloated = tmp_path / "bloated.keras"
    with zipfile.ZipFile(model_path) as source, zipfile.ZipFile(bloated, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info.filename, data + b" " * (17 << 20) if info.filename == "config.json" else data)
    assert bloated.stat().st_size < 1 << 20
    photos = write_image_folder(tmp_path / "photos", {"x": 1}, size=8)
    status = run_cli("predict", str(photos), "--model", str(bloated), "--meta", str(meta))
    err = capsys.readouterr().err
    assert status == 2 and _one_error_line(err), err
    assert err.startswith(f"error: {bloated} is not a Keras model file as a training stage writes it: its config.json "
                          "is 17 MB, past the 16 MB")


# --------------------------------------------------------------------- 12. outputs that cannot be written

@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be written in: a read-only tmpfs (root, as in the CI container), else a mode-555
    folder (anyone else); skipped where neither holds."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode == 0:
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
        return
    if os.geteuid() == 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_predict_into_a_read_only_folder_fails_before_any_work(tmp_path, tiny_model, capsys, run_cli,
                                                               read_only_folder, write_image_folder):
    model_path, meta = tiny_model
    photos = write_image_folder(tmp_path / "photos", {"x": 2}, size=8)
    for option, value in (("--output", read_only_folder / "predictions.csv"),
                          ("--output", read_only_folder / "new" / "predictions.csv"),
                          ("--score-bars", read_only_folder / "bars")):
        status = run_cli("predict", str(photos), "--model", str(model_path), "--meta", str(meta), option, str(value))
        captured = capsys.readouterr()
        assert status == 2 and _one_error_line(captured.err), captured.err
        assert captured.err.startswith(f"error: {option} {value}: cannot write in {read_only_folder}")
        assert captured.out == "", "refused before classifying: no predictions printed, none lost"
    assert list(read_only_folder.iterdir()) == []


def test_export_into_a_read_only_folder_fails_before_loading_the_model(tmp_path, tiny_model, capsys, run_cli,
                                                                       read_only_folder):
    model_path, meta = tiny_model
    out = read_only_folder / "imgclf" / "1"
    status = run_cli("export", "--model", str(model_path), "--meta", str(meta), "--out", str(out))
    err = capsys.readouterr().err
    assert status == 2 and _one_error_line(err), err
    assert err.startswith(f"error: --out {out}: cannot write in {read_only_folder}")


# ----------------------------------------------------------------------- 13. export --force deletes nothing else

@pytest.mark.parametrize("target", ["current folder", "its parent", "a folder that is no export"])
def test_export_force_never_deletes_a_folder_that_is_not_an_earlier_export(tmp_path, tiny_model, capsys, run_cli,
                                                                            monkeypatch, target):
    model_path, meta = tiny_model
    project = tmp_path / "project"
    (project / "notes").mkdir(parents=True)
    (project / "params.yaml").write_text("seed: 1\n")
    (project / "notes" / "todo.txt").write_text("keep me")
    monkeypatch.chdir(project / "notes" if target == "its parent" else project)
    out = {"current folder": ".", "its parent": "..", "a folder that is no export": "notes"}[target]
    before = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    status = run_cli("export", "--model", str(model_path), "--meta", str(meta), "--out", out, "--force")
    err = capsys.readouterr().err
    assert status == 2 and _one_error_line(err), err
    assert ("holds it" in err) if target != "a folder that is no export" else ("not an earlier export" in err), err
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == before
    assert (project / "notes" / "todo.txt").read_text() == "keep me"


# -------------------------------------------------------------------- 13. params files that are not what they say

PARAMS_CASES = {
    "utf-16": ("scratch: {epochs: 3}\n".encode("utf-16"), "not UTF-8 text (it looks like UTF-16); save it as UTF-8"),
    "latin-1": (b"mlflow: {experiment: caf\xe9}\n", "not UTF-8 text (byte 0xe9 at offset 24)"),
    "integer key": (b"1: 2\n", "top level: key 1 is not a string"),
    "mixed keys": (b"scratch: {epochs: 3, 7: x}\n", "scratch: key 7 is not a string"),
    "20000 levels": (b"scratch: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested too deeply for a params file"),
    "empty experiment": (b"mlflow: {experiment: ''}\n", "mlflow.experiment: expected a non-empty experiment name"),
}


@pytest.mark.parametrize("case", list(PARAMS_CASES))
def test_params_and_profiles_not_utf8_oddly_keyed_too_deep_or_without_experiment_are_one_line(
        tmp_path, capsys, monkeypatch, run_cli, case):
    monkeypatch.chdir(PROJECT_ROOT)  # exp-args reads the project's params.yaml
    content, expected = PARAMS_CASES[case]
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    for command in ("check-params", "exp-args"):
        status = run_cli(command, str(path))
        captured = capsys.readouterr()
        assert status == 2 and _one_error_line(captured.err), (command, captured.err[-500:])
        assert captured.err.startswith(f"error: {path}: ") and expected in captured.err, (command, captured.err)
        assert captured.out == ""


# ------------------------------------------------------------------------ 13, 14. meta.json that is not a meta.json

META_CASES = {
    "not JSON": ('{"class_names": ["a", "b"', "is not valid JSON (Expecting"),
    "a list": ('["a", "b"]', "is not a JSON object"),
    "class_names a string": ('{"class_names": "abcd"}', "class_names must be a list of class names (strings), "
                             "got 'abcd'"),
    "image_size a string": ('{"image_size": "8"}', "image_size must be a positive integer, got '8'"),
    "20000 levels": ('{"class_names": ' + "[" * 20000 + "]" * 20000 + "}", "is not valid JSON (RecursionError)"),
}


def _meta_text(case: str, tmp_path: Path, write_prepared) -> str:
    """The case's meta.json: a real one with one key replaced (the "... a string" cases), else the case's text."""
    text, _ = META_CASES[case]
    if not case.endswith(" a string"):
        return text
    meta = write_prepared(tmp_path / "prepared", class_names=["a", "b"], per_class={"train": 2, "val": 1, "test": 1})
    return json.dumps({**meta, **json.loads(text)})


@pytest.mark.parametrize("case", list(META_CASES))
def test_malformed_meta_json_is_one_line_for_stages_and_predict(tmp_path, capsys, run_cli, tiny_model,
                                                                write_prepared, write_image_folder, case):
    model_path, _ = tiny_model
    text = _meta_text(case, tmp_path, write_prepared)
    (tmp_path / "prepared").mkdir(exist_ok=True)
    (tmp_path / "prepared" / artifacts.META_FILE).write_text(text)
    expected = META_CASES[case][1]
    with pytest.raises(SystemExit) as exit_info:  # what every training, evaluation and analysis stage reads
        stage_runner.exit_on_user_error(lambda: artifacts.read_prepared_meta(tmp_path / "prepared"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and _one_error_line(err) and expected in err, err
    photos = write_image_folder(tmp_path / "photos", {"x": 1}, size=8)
    status = run_cli("predict", str(photos), "--model", str(model_path), "--meta",
                     str(tmp_path / "prepared" / artifacts.META_FILE))
    err = capsys.readouterr().err
    assert status == 2 and _one_error_line(err) and expected in err, err


# ---------------------------------------------------------- 13. archive members and folder trees no walk can hold

def _tar_with(path: Path, photos: Path, name: str) -> Path:
    data = (photos / "a" / "0000.png").read_bytes()
    with tarfile.open(path, "w") as tar:
        tar.add(photos, arcname="data")
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("name", "problem"), [("data/a/" + "x" * 300 + ".png", "has a name longer than 255 bytes"),
                                               ("data/a/" + "d/" * 2100 + "0.png", "is nested more than 64 folders")])
def test_archive_members_too_long_or_too_deep_are_refused_in_one_line(tmp_path, write_image_folder, name, problem):
    photos = write_image_folder(tmp_path / "photos", {"a": 2, "b": 2}, size=8)
    archive = _tar_with(tmp_path / "data.tar", photos, name)
    with pytest.raises(DataSourceError) as caught:
        _fetch_folder(tmp_path, archive)
    message = stage_runner.user_error_message(caught.value)
    assert message.startswith(f"{archive}: member 'data/a/") and problem in message and len(message) < 400
    assert not (tmp_path / "raw").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.tar", "photos"], "nothing left beside"


@pytest.fixture
def deep_folder(tmp_path, write_image_folder):
    """Class folders `a` and `b`, and under `a` a chain of 2,100 folders with an image at the bottom. Made and
    removed one level at a time: shutil.rmtree (pytest's clean-up) recurses once per level too."""
    photos = write_image_folder(tmp_path / "photos", {"a": 2, "b": 2}, size=8)
    descriptor = os.open(photos / "a", os.O_RDONLY)
    for _ in range(2100):
        os.mkdir("d", dir_fd=descriptor)
        deeper = os.open("d", os.O_RDONLY, dir_fd=descriptor)
        os.close(descriptor)
        descriptor = deeper
    image = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=descriptor)
    os.write(image, (photos / "a" / "0000.png").read_bytes())
    os.close(image)
    os.close(descriptor)
    yield photos
    top = photos / "a"
    while (top / "d").is_dir():  # lift the chain one level, then remove the emptied level
        os.replace(top / "d", top / "level")
        if (top / "level" / "d").exists():
            os.replace(top / "level" / "d", top / "d")
        else:
            (top / "level" / "deep.png").unlink()
        os.rmdir(top / "level")


def test_a_folder_tree_2100_levels_deep_is_one_line_for_fingerprint_download_and_predict(
        tmp_path, deep_folder, capsys, run_cli, tiny_model):
    from imgclf.data import fingerprint

    expected = "folders nested more than 64 levels deep (under "
    with pytest.raises(DataSourceError, match=re.escape(expected)):
        fingerprint.fingerprint("image_folder", str(deep_folder), project=tmp_path / "project")
    with pytest.raises(DataSourceError, match=re.escape(expected)):
        _fetch_folder(tmp_path, deep_folder)
    assert not (tmp_path / "raw").exists()
    model_path, meta = tiny_model
    status = run_cli("predict", str(deep_folder), "--model", str(model_path), "--meta", str(meta))
    err = capsys.readouterr().err
    assert status == 2 and _one_error_line(err) and expected in err, err[-500:]


# ------------------------------------------------ 13, 14. FIFOs and formats not decoded here: skipped and listed

def _float_tiff_with_nan(path: Path | io.BytesIO) -> Path | io.BytesIO:
    """An 8x8 float TIFF of 0.5 (mid-grey) with one NaN pixel: NaN made its maximum NaN, and every pixel black."""
    pixels = np.full((8, 8), 0.5, np.float32)
    pixels[0, 0] = np.nan
    Image.fromarray(pixels, mode="F").save(path, "TIFF")
    if isinstance(path, io.BytesIO):
        path.seek(0)
    return path


def test_a_float_tiff_with_nan_is_refused_not_decoded_black():
    with pytest.raises(images.ImageDecodeError, match="NaN or infinite pixels"):
        images.decode_file(_float_tiff_with_nan(io.BytesIO()), image_size=8, resize="pad")


def test_fifos_nan_tiffs_and_avif_heic_jp2_files_are_skipped_and_listed(tmp_path, tiny_params_dict,
                                                                        write_image_folder):
    from imgclf.config import params_from_dict

    photos = write_image_folder(tmp_path / "photos", {"cats": 12, "dogs": 12}, size=8)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(photos / "cats" / "x.avif")
    (photos / "cats" / "y.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0")
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(photos / "dogs" / "z.jp2")
    os.mkfifo(photos / "dogs" / "pipe.png")  # opened, it would block the copy forever
    _float_tiff_with_nan(photos / "dogs" / "nan.tif")
    info = _fetch_folder(tmp_path, photos)
    assert stat.S_ISFIFO(os.lstat(photos / "dogs" / "pipe.png").st_mode), "the user's folder is untouched"
    assert {item["file"] for item in info["skipped_files"]} == {"cats/x.avif", "cats/y.heic", "dogs/z.jp2",
                                                                "dogs/pipe.png"}
    meta = preprocess.run(params_from_dict(tiny_params_dict), raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared",
                          workers=1)
    with open(tmp_path / "prepared" / artifacts.SKIPPED_FILE, newline="") as handle:
        skipped = {row["original"]: row["reason"] for row in csv.DictReader(handle)}
    assert skipped["cats/x.avif"] == "AVIF images are not decoded here; convert them to PNG or JPEG"
    assert skipped["cats/y.heic"].startswith("HEIC images") and skipped["dogs/z.jp2"].startswith("JPEG 2000 images")
    assert skipped["dogs/pipe.png"].startswith("not a regular file (a FIFO")
    assert "NaN or infinite pixels" in skipped["images/train/dogs/nan.tif"]
    assert meta["skipped"] == 5 and sum(meta["counts"].values()) == 24


# ---------------------------------------------------------------------------- 13. Ctrl-C in a training stage

@pytest.mark.integration
def test_ctrl_c_in_training_is_one_line_exit_130_and_leaves_the_resume_state(tmp_path, tiny_params_dict,
                                                                             write_prepared, new_mlflow_store):
    from imgclf.training import fitting

    write_prepared(tmp_path / "prepared", class_names=["a", "b"], per_class={"train": 16, "val": 4, "test": 4})
    new_mlflow_store(tmp_path)
    tiny_params_dict["scratch"]["epochs"] = 1000  # still training when interrupted
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict, sort_keys=False))
    out = tmp_path / "models" / "scratch"
    backup = out / "resume" / "fit" / fitting.BACKUP_SUBDIR / "training_metadata.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", "stages.train_scratch", "--params", str(params), "--data",
                                str(tmp_path / "prepared"), "--out", str(out)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               # As from a shell: a pytest-xdist worker ignores SIGINT, and a child inherits that.
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if backup.is_file() and json.loads(backup.read_text() or "{}").get("epoch", 0) >= 1:
                break  # an epoch is backed up: training is under way
            time.sleep(0.05)
        assert process.poll() is None, "the stage ended before it could be interrupted"
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-3000:]  # the shell's status for SIGINT (docs/errors-and-limits.md)
    assert err.splitlines()[-1].startswith("error: interrupted; run the same command again to resume"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.count("error:") == 1 and "KeyboardInterrupt" not in err
    assert json.loads(backup.read_text())["epoch"] >= 1, "the resume state is kept"
    assert not (out / artifacts.MODEL_FILE).exists() and not (out / artifacts.RUN_FILE).exists()


# ----------------------------------------------------------------------------- 17. exp-args, shell-quoted

def test_exp_args_output_survives_the_readme_command_with_spaces_and_globs():
    """The own-photos command, as printed in the README and in docs/data-sources.md (the same line), run by bash
    (from the project root, whose params.yaml it reads), on a profile whose path and data.path hold a space and glob
    characters."""
    printed = [next(line for line in (PROJECT_ROOT / page).read_text().splitlines()
                    if "exp-args profiles/own_photos.yaml" in line) for page in ("README.md", "docs/data-sources.md")]
    assert printed[0] == printed[1], printed
    line = printed[0]
    with tempfile.TemporaryDirectory(prefix="my profiles [1] ") as folder:
        profile = Path(folder) / "photos*.yaml"
        profile.write_text("data:\n  source: image_folder\n  path: my photos/*.jpg\n")
        command = (line.rstrip(" \\").replace("dvc exp run", "printf '<%s>\\n'")
                   .replace(".venv/bin/python", shlex.quote(sys.executable))
                   .replace("profiles/own_photos.yaml", shlex.quote(str(profile))))
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
                                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["<-S>", '<data.source="image_folder">', "<-S>",
                                          '<data.path="my photos/*.jpg">'], command
