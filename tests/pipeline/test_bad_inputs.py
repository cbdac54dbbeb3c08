"""Hostile and careless inputs: each gets a one-line error or a skip-and-report, nothing half-written.

A compact set (well under a minute) that keeps issue 10's cases fixed: decompression bombs, poisoned
downloads, one-class data, links out of the source folder, file modes, disk full, broken MLflow stores and
the error policy of the command-line entry points.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from imgclf import fileio
from imgclf.config import params_from_dict
from imgclf.data import archives, download, preprocess, sources
from imgclf.entry_points import PROJECT_ROOT
from imgclf.errors import DataSourceError, PreprocessError

pytestmark = pytest.mark.duration(seconds=20)  # about, under make test: orders the modules

BOMB_BYTES = 40 << 20  # 40 MiB of zeros: ~40 KB compressed, a 1000:1 ratio


def _fetch_folder(tmp_path: Path, path: str | Path, **options) -> dict:
    return sources.fetch_source(source="image_folder", path=str(path), sha256=None, raw_dir=tmp_path / "raw",
                                download_dir=tmp_path / "downloads", seed=0, **options)


def _image_tar(path: Path, folder: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="data")
    return path


def _bomb(path: Path, kind: str) -> Path:
    """An archive of two small images per class and one huge run of zeros named like an image."""
    zeros = bytes(BOMB_BYTES)
    if kind == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr("cats/0.png", b"x")
            bundle.writestr("dogs/bomb.png", zeros)
        return path
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("cats/0.png", b"x"), ("dogs/bomb.png", zeros)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.name.startswith("."))


# ------------------------------------------------------------------------------- 1. bounded archives

@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_decompression_bomb_is_refused_by_its_expansion_ratio(tmp_path, kind):
    archive = _bomb(tmp_path / f"bomb.{kind}", kind)
    assert archive.stat().st_size < BOMB_BYTES / 500
    with pytest.raises(DataSourceError, match=r"\d+-fold, past data\.max_expansion_ratio=100; .*decompression bomb"):
        _fetch_folder(tmp_path, archive)
    assert not (tmp_path / "raw").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archive_larger_than_max_extracted_mb_is_refused(tmp_path, kind):
    archive = _bomb(tmp_path / f"big.{kind}", kind)
    limits = archives.ExtractionLimits(max_extracted_mb=10, max_expansion_ratio=1e9)
    with pytest.raises(DataSourceError, match=r"past data\.max_extracted_mb=10 MB"):
        _fetch_folder(tmp_path, archive, limits=limits)
    assert not (tmp_path / "raw").exists() and _leftovers(tmp_path) == []


def test_zip_whose_directory_understates_sizes_is_still_bounded(tmp_path):
    """The count is of bytes actually decompressed, not the sizes the archive claims."""
    archive = _bomb(tmp_path / "liar.zip", "zip")
    data = bytearray(archive.read_bytes())
    declared = BOMB_BYTES.to_bytes(4, "little")
    data[:] = data.replace(declared, (10).to_bytes(4, "little"))  # local header and central directory
    archive.write_bytes(bytes(data))
    with pytest.raises(DataSourceError, match=r"max_expansion_ratio|corrupt"):
        archives.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- 2. poisoned downloads

@pytest.mark.parametrize("bad_body", ["html", "truncated"])
def test_bad_download_is_removed_and_fetched_again_once_the_server_is_fixed(tmp_path, http_server, bad_body,
                                                                            write_image_folder):
    good = _image_tar(tmp_path / "good.tar.gz", write_image_folder(tmp_path / "photos", {"a": 3, "b": 3}))
    served = http_server.root / "data.tar.gz"
    served.write_bytes(b"<html><body>503 try later</body></html>" if bad_body == "html"
                       else good.read_bytes()[: good.stat().st_size // 2])
    url = f"{http_server.url}/data.tar.gz"
    with pytest.raises(DataSourceError, match=r"corrupt|not a \.tar"):
        _fetch_folder(tmp_path, url)
    assert [path.name for path in (tmp_path / "downloads").iterdir()] == []  # nothing cached to reuse

    served.write_bytes(good.read_bytes())  # the server is fixed
    info = _fetch_folder(tmp_path, url)
    assert info["num_examples"]["train"] == 6 and len(http_server.requests) == 2
    _fetch_folder(tmp_path, url)  # verified last time: reused, not fetched again
    assert len(http_server.requests) == 2


def test_cached_file_that_never_verified_is_not_reused(tmp_path, http_server, write_image_folder):
    good = _image_tar(tmp_path / "good.tar.gz", write_image_folder(tmp_path / "photos", {"a": 3, "b": 3}))
    (http_server.root / "data.tar.gz").write_bytes(good.read_bytes())
    url = f"{http_server.url}/data.tar.gz"
    # A bad file left in the cache by an older version (which kept it after failing) is replaced.
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / download.url_cache_name(url)).write_bytes(b"<html>oops</html>")
    assert _fetch_folder(tmp_path, url)["num_examples"]["train"] == 6
    assert len(http_server.requests) == 1


# ---------------------------------------------------------------------------------------- 3. one class

@pytest.mark.parametrize("policy", ["error", "drop"])
def test_one_class_is_refused_at_preprocess(tmp_path, tiny_params_dict, policy, write_image_folder):
    folder = write_image_folder(tmp_path / "photos", {"only": 12})
    tiny_params_dict["preprocess"]["small_class_policy"] = policy
    params = params_from_dict(tiny_params_dict)
    _fetch_folder(tmp_path, folder)
    with pytest.raises(PreprocessError, match=r"at least 2 classes.*found only 'only'"):
        preprocess.run(params, raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared", workers=1)
    assert not (tmp_path / "prepared").exists() and _leftovers(tmp_path) == []


# -------------------------------------------------------------------------------------------- 6. links

def test_links_out_of_the_source_folder_are_skipped_and_reported(tmp_path, caplog, write_image_folder):
    folder = write_image_folder(tmp_path / "photos", {"cats": 2, "dogs": 2})
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"password")
    (folder / "cats" / "x.png").symlink_to(secret)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "y.png").write_bytes(b"private")
    (folder / "birds").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (folder / "dogs" / "inside.png").symlink_to(folder / "cats" / "0000.png")  # stays inside: kept
    info = _fetch_folder(tmp_path, folder)
    raw_files = {path.relative_to(tmp_path / "raw").as_posix() for path in (tmp_path / "raw").rglob("*.png")}
    assert "images/train/cats/x.png" not in raw_files and "images/train/birds/y.png" not in raw_files
    assert "images/train/dogs/inside.png" in raw_files
    assert all(b"password" not in path.read_bytes() for path in (tmp_path / "raw").rglob("*.png"))
    assert info["skipped_links"] == sorted([str(folder / "birds" / "y.png"), str(folder / "cats" / "x.png")])
    assert "skipped 2 link(s) to files outside the folder" in caplog.text


def test_archive_links_to_other_members_work_whatever_the_member_order(tmp_path, write_image_folder):
    folder = write_image_folder(tmp_path / "photos", {"cats": 2, "dogs": 2})
    # Each link sorts after its target, so moving the target first (as the extraction does) broke it.
    (folder / "cats" / "zz.png").symlink_to("0000.png")
    (folder / "dogs" / "zz.png").symlink_to("../cats/0001.png")
    (folder / "owls").symlink_to("cats", target_is_directory=True)
    info = _fetch_folder(tmp_path, _image_tar(tmp_path / "linked.tar.gz", folder))
    images = tmp_path / "raw" / "images" / "train"
    assert (images / "cats" / "zz.png").read_bytes() == (images / "cats" / "0000.png").read_bytes()
    assert (images / "dogs" / "zz.png").read_bytes() == (images / "cats" / "0001.png").read_bytes()
    assert sorted(path.name for path in (images / "owls").iterdir()) == ["0000.png", "0001.png", "zz.png"]
    assert info["num_examples"]["train"] == 9 and info["skipped_links"] == []


# ---------------------------------------------------------------------------------------- 8. file modes

@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_results_and_prepared_data_get_the_umask_mode(tmp_path, tiny_params_dict, umask_022, write_image_folder):
    fileio.atomic_write_json(tmp_path / "results" / "metrics.json", {"accuracy": 1})
    assert stat.S_IMODE((tmp_path / "results" / "metrics.json").stat().st_mode) == 0o644
    folder = write_image_folder(tmp_path / "photos", {"cats": 12, "dogs": 12})
    _fetch_folder(tmp_path, folder)
    preprocess.run(params_from_dict(tiny_params_dict), raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared",
                   workers=1)
    for path in [tmp_path / "raw", tmp_path / "prepared", *(tmp_path / "prepared").rglob("*")]:
        expected = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    os.umask(0o077)
    fileio.atomic_write_text(tmp_path / "private.txt", "x")
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600


def test_sha256_of_a_verified_download_is_recorded(tmp_path, http_server, write_image_folder):
    good = _image_tar(tmp_path / "good.tar.gz", write_image_folder(tmp_path / "photos", {"a": 3, "b": 3}))
    (http_server.root / "data.tar.gz").write_bytes(good.read_bytes())
    info = _fetch_folder(tmp_path, f"{http_server.url}/data.tar.gz")
    assert info["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "raw" / "source.json").read_text())["sha256"] == info["sha256"]


# --------------------------------------------------------------------------------- 5. MLflow store, runs

@pytest.fixture
def store(tmp_path, monkeypatch, new_mlflow_store):
    """A fresh SQLite store in tmp_path, as a stage would use it (no MLFLOW_TRACKING_URI, no outer run)."""
    from imgclf.tracking import store as tracking_store

    new_mlflow_store(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    tracking_store.configure(tmp_path, "hostile")


def test_discarded_resume_state_ends_its_run_as_killed(tmp_path, store):
    import mlflow

    from imgclf.training import fitting

    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name("hostile").experiment_id
    killed = client.create_run(experiment).info.run_id  # what kill -9 mid-training leaves: RUNNING
    fitting.ResumeState(tmp_path / "resume", fingerprint={"epochs": 4}, enabled=True).remember_run(killed)
    state = fitting.ResumeState(tmp_path / "resume", fingerprint={"epochs": 5}, enabled=True)  # params changed
    assert state.run_id() is None
    state.remember_run(client.create_run(experiment).info.run_id)
    assert client.get_run(killed).info.status == "KILLED"


def test_failed_training_leaves_no_run_json(tmp_path, store, tiny_params_dict):
    from imgclf.tracking import runs

    params = params_from_dict(tiny_params_dict)
    with (pytest.raises(RuntimeError, match="boom"),
          runs.training_run(params, model="scratch", project_root=tmp_path, out_dir=tmp_path / "model",
                         data_sha256=None, logged_params={"a": 1})):
        assert (tmp_path / "model" / "run.json").is_file()
        raise RuntimeError("boom")
    assert not (tmp_path / "model" / "run.json").exists()


def test_corrupt_mlflow_db_is_one_line_naming_the_file(tmp_path, monkeypatch):
    from imgclf.errors import TrackingStoreError
    from imgclf.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.db").write_bytes(os.urandom(20000))
    with pytest.raises(TrackingStoreError) as caught:
        store.configure(tmp_path, "hostile")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "mlflow.db") in message and "move it aside" in message


@pytest.mark.parametrize("entry_point", ["champion", "model URI"])
def test_a_corrupt_store_behind_a_model_uri_is_one_line(tmp_path, monkeypatch, capsys, entry_point,
                                                        write_image_folder):
    """`mlflow run -e predict` (model `champion`) and `imgclf predict models:/...` open the store too."""
    from imgclf import entry_points, stage_runner

    store = tmp_path / "mlflow.db"
    store.write_bytes(os.urandom(20000))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path)
    images = write_image_folder(tmp_path / "images", {"x": 1}, size=8)
    if entry_point == "champion":
        with pytest.raises(SystemExit) as exit_info:
            entry_points.main(["predict", "--images", str(images), "--model", "champion"])
        status, err = exit_info.value.code, capsys.readouterr().err
    else:
        status, err = _cli(capsys, "predict", str(images), "--model", "models:/imgclf-transfer@champion")
    assert status == stage_runner.EXIT_USER_ERROR and err.startswith("error: the MLflow tracking store ")
    assert str(store) in err and err.count("\n") == 1


def test_a_store_locked_past_the_timeout_is_one_line_naming_the_lock_file(tmp_path):
    """Another process holding `mlflow.db.lock` (a stuck stage): a TrackingStoreError after the timeout, not a wait
    without end."""
    from imgclf.errors import TrackingStoreError
    from imgclf.tracking import store

    lock_file = tmp_path / f"mlflow.db{store.STORE_LOCK_SUFFIX}"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, filelock\n"
                               f"lock = filelock.FileLock({str(lock_file)!r})\nlock.acquire()\n"
                               "print('held', flush=True)\nsys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrackingStoreError) as caught, store.store_lock(f"sqlite:///{tmp_path}/mlflow.db",
                                                                              timeout=0.2):
            pass
    finally:
        holder.communicate("", timeout=30)
    message = str(caught.value)
    assert "\n" not in message and str(lock_file) in message and "run this again" in message
    with store.store_lock(f"sqlite:///{tmp_path}/mlflow.db", timeout=5):  # released with its process
        pass


def test_registry_and_outer_run_trouble_is_a_user_error_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys,
                                                                                       store, write_image_folder):
    """No model holds `champion`, MLFLOW_RUN_ID names a run the store lacks: one `error:` line, exit 2. Any other
    exception out of the pipeline's entry point is a bug: it propagates (with its traceback)."""
    from imgclf import entry_points, stage_runner
    from imgclf.errors import RegistryError, TrackingStoreError
    from imgclf.tracking import registry
    from imgclf.tracking import store as tracking_store

    monkeypatch.chdir(tmp_path)
    images = write_image_folder(tmp_path / "images", {"x": 1}, size=8)
    with pytest.raises(RegistryError, match="alias 'champion'"):
        registry.champion_uri()
    with pytest.raises(SystemExit) as exit_info:
        entry_points.main(["predict", "--images", str(images), "--model", "champion"])
    err = capsys.readouterr().err
    assert exit_info.value.code == stage_runner.EXIT_USER_ERROR
    assert err.startswith("error: no registered model has the alias")
    assert err.count("\n") == 1

    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with pytest.raises(TrackingStoreError, match=r"MLFLOW_RUN_ID=0+ is set"):
        tracking_store.configure(tmp_path, "hostile")

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(registry, "champion_uri", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        entry_points.main(["predict", "--images", str(images), "--model", "champion"])


# ------------------------------------------------------------------------------- 7. one error policy

def _cli(capsys, *argv: str) -> tuple[int, str]:
    """`imgclf ARGV` in this process: (exit status, stderr)."""
    from imgclf.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "yaml", "not-a-mapping"])
def test_cli_params_and_profile_trouble_is_one_line_exit_2(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # exp-args reads the project's params.yaml
    profile = tmp_path / "profile.yaml"
    if case == "yaml":
        profile.write_text("scratch: {epochs: [1\n")
    elif case == "not-a-mapping":
        profile.write_text("- scratch.epochs=3\n")
    for command in ("check-params", "exp-args"):
        status, err = _cli(capsys, command, str(profile))
        assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, (command, err)
        assert str(profile) in err and "Traceback" not in err
        assert case != "missing" or ("not found" in err and "Errno" not in err), err  # says what to do


def test_predict_output_and_score_bars_mistakes_fail_before_any_work(tmp_path, capsys, tiny_model, write_image_folder):
    model, meta = tiny_model
    write_image_folder(tmp_path / "images", {"x": 2}, size=8)
    (tmp_path / "taken.png").write_bytes(b"")
    for option, value, message in (("--output", tmp_path, "is a directory"),
                                   ("--score-bars", tmp_path / "taken.png", "is not a folder")):
        status, err = _cli(capsys, "predict", str(tmp_path / "images"), "--model", str(model), "--meta",
                           str(meta), option, str(value))
        assert status == 2 and message in err and err.count("\n") == 1, err


def test_predict_path_that_does_not_exist_fails_before_any_work(tmp_path, capsys, tiny_model, write_image_folder):
    model, meta = tiny_model
    images = write_image_folder(tmp_path / "images", {"x": 1}, size=8)
    status, err = _cli(capsys, "predict", str(images), str(tmp_path / "typo.png"), "--model", str(model), "--meta",
                       str(meta))
    assert status == 2 and err == f"error: {tmp_path / 'typo.png'}: no such file or folder; check the path\n"


@pytest.mark.parametrize("what", ["model", "backbone"])
def test_corrupt_model_or_backbone_file_is_one_line_exit_2(tmp_path, capsys, what):
    """The evaluate and transfer stages load models through model_io.load_model, extract_features its backbone."""
    from imgclf import model_io, stage_runner
    from imgclf.config import TransferConfig
    from imgclf.training import features

    broken = tmp_path / "model.keras"
    broken.write_bytes(b"PK\x03\x04 cut short")
    load = ((lambda: model_io.load_model(broken, remedy="retrain it")) if what == "model"
            else (lambda: features.load_backbone({"file": str(broken), "preprocessing": "none"},
                                                 TransferConfig(backbone=str(broken), weights=None))))
    with pytest.raises(SystemExit) as exit_info:
        stage_runner.exit_on_user_error(load)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"error: {broken} is not a Keras model file (")
    assert err.count("\n") == 1 and ("retrain it" in err if what == "model" else "raw [0, 255] RGB" in err)


def test_score_bar_trouble_never_loses_the_predictions(tmp_path, capsys, tiny_model, write_image_folder):
    model, meta = tiny_model
    write_image_folder(tmp_path / "images", {"x": 2}, size=8)
    bars = tmp_path / "bars"
    (bars / "0000-0000.png").mkdir(parents=True)  # the first figure cannot be written (IsADirectoryError)
    output = tmp_path / "predictions.csv"
    status, err = _cli(capsys, "predict", str(tmp_path / "images"), "--model", str(model), "--meta", str(meta),
                       "--format", "csv", "--output", str(output), "--score-bars", str(bars))
    assert status == 2 and "score bars stopped" in err and "predictions above are complete" in err
    assert len(output.read_text().splitlines()) == 3  # header and both images


@pytest.mark.integration
def test_stage_with_a_broken_params_file_is_one_line_exit_2(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data: {source: [synthetic\n")
    result = subprocess.run([sys.executable, "-m", "stages.download", "--params", str(params), "--out",
                             str(tmp_path / "raw"), "--download-dir", str(tmp_path / "dl")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1 and str(params) in result.stderr


def test_mlproject_entry_point_mistake_is_one_line_exit_2(capsys):
    from imgclf import entry_points

    with pytest.raises(SystemExit) as exit_info:
        entry_points.main(["predict", "--images", "", "--model", "x.keras"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: images:") and err.count("\n") == 1


@pytest.mark.integration
def test_mlproject_run_turns_a_stage_refusal_into_one_line_exit_2(tmp_path):
    """`mlflow run . -e main` runs `python -m imgclf.entry_points run`: dvc exits 255 when a stage exits 2."""
    from imgclf import smoke_copy

    photos = tmp_path / "no-such-photos"
    root = smoke_copy.create(tmp_path / "project", source_root=PROJECT_ROOT, overrides=smoke_copy.merge(
        smoke_copy.SMOKE_OVERRIDES, {"data": {"source": "image_folder", "path": str(photos)}}))
    result = subprocess.run([sys.executable, "-m", "imgclf.entry_points", "run"], cwd=root,
                            env=smoke_copy.environment(root), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: stage 'fingerprint_data': data.path '{photos}' does not exist")
    assert result.stderr.count("\n") == 1 and "failed to reproduce" not in result.stderr


@pytest.mark.integration
def test_mlproject_run_keeps_dvcs_status_and_words_for_a_crash(tmp_path, capsys):
    """Only a stage's exit 2 is rewritten; a crashing stage's lines, held back while DVC runs, are all shown."""
    from imgclf import entry_points

    (tmp_path / "dvc.yaml").write_text('stages:\n  crash:\n    cmd: "echo error: boom >&2 && exit 1"\n')
    subprocess.run([*entry_points.DVC, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=120)
    status = entry_points.run_pipeline(tmp_path)
    err = capsys.readouterr().err
    assert status == 255 and "error: boom" in err and "failed to reproduce 'crash'" in err and "exited with 1" in err


def test_environment_programs_run_stages_with_its_python_without_activation(tmp_path):
    """What `make setup` installs: `.venv/bin/dvc repro` then finds .venv's python for dvc.yaml's `python`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    shutil.copy(PROJECT_ROOT / "scripts" / "venv_on_path.pth", Path(purelib) / "imgclf_venv_on_path.pth")
    # As DVC runs a stage: a shell, with the caller's PATH, which does not hold the environment.
    found = subprocess.run([python, "-c", "import subprocess; subprocess.run('command -v python', shell=True)"],
                           env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True).stdout
    assert found.strip() == str(python)


# ---------------------------------------------------------------------------------------- 4. disk full

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (needs root, as in the CI container); skipped where mounting is not allowed."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def _children() -> set[str]:
    """This process's child processes. Compare with a snapshot taken before: under pytest-xdist a worker may
    already run the background pipeline build (tests/conftest.py)."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    return {pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()}


def test_preprocess_on_a_full_disk_says_how_much_space_and_leaves_nothing(tmp_path, tiny_params_dict, small_disk,
                                                                          write_image_folder):
    folder = write_image_folder(tmp_path / "photos", {"cats": 30, "dogs": 30})
    tiny_params_dict["preprocess"]["image_size"] = 128  # 60 x 128 x 128 x 3: about 3 MB, twice over
    _fetch_folder(tmp_path, folder)
    before = _children()
    with pytest.raises(PreprocessError, match=rf"no space left on {small_disk}, need about 7 MB \(4 MB free\)"):
        preprocess.run(params_from_dict(tiny_params_dict), raw_dir=tmp_path / "raw",
                       out_dir=small_disk / "prepared", workers=2)
    assert list(small_disk.iterdir()) == [] and _children() <= before


def test_disk_filling_up_during_preprocess_is_an_error_not_a_crash(tmp_path, tiny_params_dict, monkeypatch,
                                                                   write_image_folder):
    from imgclf.data import tfdata

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "prepared-shard"))

    monkeypatch.setattr(tfdata, "write_shards", disk_full)  # ENOSPC injected where the shards are written
    # More images than one decode chunk, so the worker processes run and must be gone afterwards.
    folder = write_image_folder(tmp_path / "photos", {"cats": 150, "dogs": 150}, size=8)
    _fetch_folder(tmp_path, folder)
    before = _children()
    with pytest.raises(PreprocessError, match=rf"no space left on {tmp_path}, need about 3 MB"):
        preprocess.run(params_from_dict(tiny_params_dict), raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared",
                       workers=2)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "prepared").exists() and _children() <= before


def test_download_on_a_full_disk_says_how_much_space_and_leaves_no_part_file(small_disk, http_server):
    (http_server.root / "big.tar.gz").write_bytes(os.urandom(6 << 20))
    with pytest.raises(DataSourceError, match=rf"no space left on {small_disk}, need about 6 MB"):
        download.download(f"{http_server.url}/big.tar.gz", small_disk / "big.tar.gz", sha256=None)
    assert list(small_disk.iterdir()) == []


POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"


def test_a_postscript_file_named_jpg_never_starts_an_external_program(tmp_path):
    """Pillow hands EPS to Ghostscript; only raster formats are opened, so a `gs` on PATH is never run."""
    marker = tmp_path / "gs-ran"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    (tmp_path / "photo.jpg").write_bytes(POSTSCRIPT)
    script = ("import sys; from pathlib import Path; from imgclf.data import images\n"
              "try:\n    images.decode_file(Path(sys.argv[1]), image_size=8, resize='pad')\n"
              "except images.ImageDecodeError as error:\n    print('skipped:', error)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "photo.jpg")], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"},
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("skipped: UnidentifiedImageError"), result.stdout
    assert not marker.exists(), "Ghostscript was started on the file"


def test_predict_refuses_a_device_as_output_before_any_work(tmp_path, capsys, tiny_model, write_image_folder):
    model, meta = tiny_model
    photos = write_image_folder(tmp_path / "photos", {"cat": 1}, size=8)
    device = Path("/dev/null")
    before = os.stat(device)
    status, err = _cli(capsys, "predict", str(photos), "--model", str(model), "--meta", str(meta), "--output",
                       str(device))
    assert status == 2 and err.startswith("error: /dev/null is a device, FIFO or socket") and err.count("\n") == 1
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(fileio.SpecialFileError):
        fileio.atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize(("key", "value"), [("data.max_extracted_mb", float("nan")), ("scratch.learning_rate",
                                            float("nan")), ("data.val_fraction", float("inf")),
                                            ("analysis.confidence_level", float("nan")), ("seed", 2**32)])
def test_nan_infinity_and_out_of_range_seeds_are_refused_by_the_params_check(tiny_params_dict, key, value):
    from imgclf.config import ConfigError

    section, _, field = key.rpartition(".")
    params = json.loads(json.dumps(tiny_params_dict))
    (params[section] if section else params)[field] = value
    with pytest.raises(ConfigError, match=r"finite number|expected a value"):
        params_from_dict(params, source="params.yaml")
