"""Training that earns its numbers: resume after SIGKILL, determinism, switches, distribution, fine-tuning.

Training stages run as DVC runs them: `python -m stages.<name>` in a subprocess (deterministic mode and
dtype policies are process-wide), on a small generated data set prepared once for the module.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from imgclf.config import params_from_dict
from imgclf.data import preprocess, sources
from imgclf.entry_points import PROJECT_ROOT
from imgclf.smoke_copy import merge
from imgclf.training import fitting

# Big enough that an epoch takes about a second: a kill lands mid-epoch.
DATA = {"source": "synthetic", "synthetic_classes": 4, "synthetic_per_class": 200, "synthetic_image_size": 32}
# For tests that check what a switch does, not how long an epoch lasts: a quarter of the images.
SMALL_DATA_PER_CLASS = 50
# No assertion here depends on the model's size: the smoke settings' CNN (the seed CNN's blocks, conv, dropout,
# BatchNorm, MaxNorm dense, at a third of its CPU time per epoch; the switches test: 116 s -> 40 s of CPU).
SMALL_CNN = {"conv_filters": [16, 32], "pool_after": [1, 2], "dense_units": [64]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, new_mlflow_store):
    """Prepared data (`prepared`, and a quarter of it in `prepared-small`) plus a params template (the real
    params.yaml with small data and the smoke CNN). BatchNorm statistics are re-estimated on 4 batches, not the
    whole training set: what these tests check (resume, determinism, switches) does not depend on how many."""
    root = tmp_path_factory.mktemp("training")
    new_mlflow_store(root)
    base = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    base = merge(base, {"data": DATA, "preprocess": {"min_images_per_class": 5}, "deterministic": True,
                        "scratch": {**SMALL_CNN, "epochs": 3, "batch_size": 32, "batch_norm_images": 128},
                        "transfer": {"backbone": "mobilenet_v3_small", "weights": None, "input_size": 32, "epochs": 3},
                        "mlflow": {"experiment": "imgclf-tests"}})
    params = params_from_dict(base)
    for suffix, per_class in (("", DATA["synthetic_per_class"]), ("-small", SMALL_DATA_PER_CLASS)):
        sources.fetch_source(source="synthetic", path=None, sha256=None, raw_dir=root / f"raw{suffix}",
                             download_dir=root / "downloads", seed=params.seed, synthetic_classes=4,
                             synthetic_per_class=per_class, synthetic_image_size=32)
        preprocess.run(params, raw_dir=root / f"raw{suffix}", out_dir=root / f"prepared{suffix}", workers=1)
    return root, base


def _write_params(root: Path, base: dict, name: str, overrides: dict) -> Path:
    path = root / f"{name}.yaml"
    params = merge(base, overrides)
    params_from_dict(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _environment(root: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}


def _train_command(stage: str, params: Path, root: Path, out: Path, *, data: str = "prepared") -> list[str]:
    return [sys.executable, "-m", f"stages.{stage}", "--params", str(params), "--data", str(root / data),
            "--out", str(out)]


def _run(command: list[str], root: Path) -> subprocess.CompletedProcess:
    """The stage from `root`, its project root: logs it writes beside the code (TensorBoard) land in this test's
    directory, not in the checkout."""
    result = subprocess.run(command, cwd=root, env=_environment(root), capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _history(out: Path) -> list[dict[str, str]]:
    with open(out / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _final(out: Path, key: str = "val_loss") -> float:
    return float(_history(out)[-1][key])


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    root, base = workspace
    params = _write_params(root, base, "seed", {})
    out = root / "uninterrupted"
    _run(_train_command("train_scratch", params, root, out), root)
    return out


@pytest.mark.integration
@pytest.mark.slow(seconds=55)
def test_sigkill_mid_epoch_then_rerun_resumes_bit_identical_to_an_uninterrupted_run(workspace, uninterrupted):
    """Also the determinism test: the killed, the resumed and the uninterrupted run are three processes in
    deterministic mode, and the resumed run must end on exactly the uninterrupted run's numbers. (A separate
    pair of fresh runs proved nothing more and cost half a minute of the suite.)"""
    root, base = workspace
    params = _write_params(root, base, "seed", {})
    out = root / "killed"
    metadata = out / "resume" / "fit" / fitting.BACKUP_SUBDIR / "training_metadata.json"
    process = subprocess.Popen(_train_command("train_scratch", params, root, out), cwd=root,
                               env=_environment(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if metadata.is_file() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 1:
            break  # the first epoch is backed up: the second is under way
        time.sleep(0.02)
    assert process.poll() is None, "training finished before it could be killed; make the epochs longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "model.keras").exists()

    resumed = _run(_train_command("train_scratch", params, root, out), root)
    assert "resuming from the end of epoch 1 of 3" in resumed.stderr
    rows = _history(out)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    # Weights, optimizer state, schedule position, shuffling order and dropout masks are all restored, and every
    # op is deterministic: the same digits, not merely close ones.
    for key in ("val_loss", "accuracy", "loss"):
        assert [row[key] for row in rows] == [row[key] for row in _history(uninterrupted)], key
    assert not (out / "resume").exists(), "a finished run leaves no resume state"
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    steps = sorted({metric.step for metric in client.get_metric_history(run_id, "val_loss")})
    assert steps == [1, 2, 3], "the resumed run continues the same MLflow run"


@pytest.mark.integration
@pytest.mark.slow(seconds=35)
def test_every_switch_on(workspace):
    root, base = workspace
    params = _write_params(root, base, "switches", {
        "deterministic": False,
        "augment": {"enabled": True, "rotate": 0.05, "zoom": 0.1, "contrast": 0.1},
        "scratch": {"epochs": 2, "optimizer": "adamw", "weight_decay": 1e-4, "label_smoothing": 0.1,
                    "lr_schedule": "one_cycle", "early_stopping": True, "early_stopping_patience": 1,
                    "checkpoint_best": True},
        "training": {"tensorboard": True, "precision": "mixed_bfloat16", "jit_compile": True}})
    out = root / "switches"
    _run(_train_command("train_scratch", params, root, out, data="prepared-small"), root)
    rows = _history(out)
    rates = [float(row["learning_rate"]) for row in rows]
    assert rates[0] != rates[-1], "one-cycle changes the learning rate"
    assert (out / "model.keras").is_file()
    # The logs of this run only: its own project root, its own MLflow run id (never an earlier run's leftovers).
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    events = list((root / "logs" / "tensorboard" / "scratch" / run_id / "train").glob("events.out.tfevents.*"))
    assert events and all(path.stat().st_size > 0 for path in events), "TensorBoard wrote no training events"


@pytest.mark.integration
@pytest.mark.slow
def test_step_schedule_with_sgd_and_plateau(workspace):
    root, base = workspace
    params = _write_params(root, base, "sgd", {
        "scratch": {"epochs": 3, "optimizer": "sgd", "lr_schedule": "step", "lr_step_epochs": 1,
                    "lr_decay_factor": 0.5, "learning_rate": 0.01}})
    out = root / "sgd"
    _run(_train_command("train_scratch", params, root, out, data="prepared-small"), root)
    rates = [float(row["learning_rate"]) for row in _history(out)]
    np.testing.assert_allclose(rates, [0.005, 0.0025, 0.00125], rtol=1e-5)  # logged after each epoch's steps


def _one_epoch(workspace, name: str, training: dict) -> tuple[Path, Path]:
    """One epoch of the scratch model under `training` settings, nondeterministic kernels allowed: (root, params)."""
    root, base = workspace
    return root, _write_params(root, base, name, {"deterministic": False, "scratch": {"epochs": 1},
                                                  "training": training})


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.scale_out  # with the other distribution tests (`make test-scale-out`, run by CI after `make test`)
def test_mirrored_strategy_on_two_logical_cpus(workspace):
    root, params = _one_epoch(workspace, "mirrored", {"distribute": "mirrored"})
    script = (
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from imgclf.data import tfdata\n"
        "assert tfdata.distribution_strategy('mirrored').num_replicas_in_sync == 2\n"
        "import sys; from stages import train_scratch\n"
        f"sys.argv = ['train_scratch', '--params', {str(params)!r}, '--data', {str(root / 'prepared-small')!r},"
        f" '--out', {str(root / 'mirrored')!r}]\n"
        "train_scratch.main()\n"
    )
    _run([sys.executable, "-c", script], root)
    assert (root / "mirrored" / "model.keras").is_file()


@pytest.mark.integration
@pytest.mark.slow(seconds=35)
def test_transfer_fine_tuning_continues_the_step_axis(workspace):
    root, base = workspace
    params = _write_params(root, base, "finetune", {"augment": {"enabled": True},
                                                    # a light backbone: what is tested is the phases
                                                    "transfer": {"backbone": "mobilenet_v2", "epochs": 2,
                                                                 "finetune_epochs": 2, "finetune_layers": 10,
                                                                 "augment_copies": 1}})
    features, backbone = root / "features", root / "backbone.json"
    _run([sys.executable, "-m", "stages.check_params", "--params", str(params), "--out", str(root / "checked"),
          "--backbone", str(backbone)], root)  # resolves transfer.backbone, as in dvc.yaml
    _run([sys.executable, "-m", "stages.extract_features", "--params", str(params), "--data",
          str(root / "prepared-small"), "--backbone", str(backbone), "--out", str(features)], root)
    extracted = json.loads((features / "features.json").read_text())
    assert extracted["augmented_views"] == ["train_aug1"], "one augmented view of the training set, extracted once"
    assert extracted["timings"]["train_aug1"]["images"] == extracted["timings"]["train"]["images"]
    out = root / "transfer"
    _run([sys.executable, "-m", "stages.train_transfer", "--params", str(params), "--data",
          str(root / "prepared-small"), "--features", str(features), "--out", str(out)], root)
    rows = _history(out)
    assert [(int(row["epoch"]), row["phase"]) for row in rows] == [
        (1, "head"), (2, "head"), (3, "finetune"), (4, "finetune")]
    assert float(rows[-1]["learning_rate"]) == pytest.approx(1e-5)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["finetune_epochs"] == 2
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_run(run_id)
    assert run.data.params["train_features"] == str(2 * extracted["timings"]["train"]["images"])


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.gpu
def test_mixed_float16_trains_on_a_gpu_with_float32_outputs(workspace):
    """The float16 path: TensorFlow runs float16 kernels on GPUs only (on a CPU the policy is slow or refused)."""
    root, params = _one_epoch(workspace, "float16", {"precision": "mixed_float16"})
    out = root / "float16"
    _run(_train_command("train_scratch", params, root, out), root)
    assert np.isfinite(_final(out)), "float16 training diverged (loss scaling?)"
    check = ("import sys; from imgclf import model_io; model = model_io.load_model(sys.argv[1]);"
             "assert model.output.dtype == 'float32', model.output.dtype;"
             "assert any(layer.compute_dtype == 'float16' for layer in model.layers), 'no float16 layer'")
    _run([sys.executable, "-c", check, str(out / "model.keras")], root)
