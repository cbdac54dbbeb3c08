"""What the training stages share, one floor below them: features, precision, compiling, callbacks, summaries.

No stage module is imported by another: scratch, transfer, features and lr_finder all build on this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from imgclf import artifacts
from imgclf.artifacts import PreparedMeta
from imgclf.config import FitConfig, Params
from imgclf.tracking import runs
from imgclf.training import fitting

log = logging.getLogger(__name__)


def load_features(features_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(features_dir) / artifacts.features_file(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the extract_features stage first (dvc repro)")
    with np.load(path) as data:
        return data["features"], data["labels"]


def training_features(features_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The training features with every augmented view, if the features stage extracted any."""
    views = [load_features(features_dir, "train")]
    augmented = sorted(Path(features_dir).glob(artifacts.features_file(f"{artifacts.AUGMENTED_VIEW_PREFIX}*")))
    views += [load_features(features_dir, path.stem) for path in augmented]
    return np.concatenate([view[0] for view in views]), np.concatenate([view[1] for view in views])


def first_images(dataset, count: int = 2) -> np.ndarray:
    for batch in dataset.take(1):
        return np.asarray(batch[0])[:count]
    raise ValueError("empty dataset")


# CPU flags (x86 /proc/cpuinfo "flags", Arm "Features") of instructions that compute in bfloat16. Without one,
# TensorFlow's bfloat16 kernels run emulated: airbench94-width training ran 15x slower than float32 on an AVX2 CPU
# (6.3 against 97.5 images/s, bench/results/throughput-avx2-2026-11-26.json).
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """The first CPU's instruction-set flags in a /proc/cpuinfo text; None where it lists none (not Linux)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def emulated_precision_warning(precision: str, *, flags: frozenset[str] | None,
                               list_devices: Callable[[], list[str]]) -> str | None:
    """Why `precision` will run emulated, and what to set instead; None where it runs natively or nobody can tell.

    Only bfloat16 on a CPU-only machine is judged: an accelerator computes it natively, and a CPU's flags say
    whether it has bfloat16 instructions. (float16 on a CPU is not: never measured here.) `list_devices` (Keras'
    devices, e.g. "cpu:0", "gpu:0") is called only when the CPU decides nothing: on TensorFlow it starts the runtime.
    """
    if precision != "mixed_bfloat16" or flags is None or flags & BFLOAT16_CPU_FLAGS:
        return None
    if any(not device.lower().startswith("cpu") for device in list_devices()):
        return None
    return ("training.precision is mixed_bfloat16, but this CPU has no bfloat16 instructions (none of "
            f"{', '.join(sorted(BFLOAT16_CPU_FLAGS))} in /proc/cpuinfo) and no accelerator is visible: bfloat16 "
            "runs emulated, about 15x slower than float32 (BENCHMARKS.md, CPU throughput). Set training.precision: "
            "float32 on this machine (e.g. dvc exp run -S training.precision=float32).")


def set_precision(precision: str, *, cpuinfo_path: Path = Path("/proc/cpuinfo")) -> None:
    """The global dtype policy; call before building models. Warns when the machine would emulate it."""
    flags = cpu_flags(cpuinfo_path.read_text(errors="replace")) if cpuinfo_path.is_file() else None
    warning = emulated_precision_warning(precision, flags=flags, list_devices=keras.distribution.list_devices)
    if warning:
        log.warning(warning)
    keras.mixed_precision.set_dtype_policy(precision)


def compile_model(model: keras.Model, config: FitConfig, *, steps_per_epoch: int, jit_compile: bool,
                  epochs: int | None = None, learning_rate: float | None = None) -> None:
    """The one compile path: configured optimizer and schedule, label-smoothed loss, accuracy.

    `training.jit_compile` is TensorFlow's choice (XLA or its own graph). On the JAX backend (multi_worker's
    workers) the step is always jitted: unjitted, JAX runs the step op by op, compiling each op on first use (17 s
    of a 3-epoch smoke run) and dispatching it alone."""
    jit_compile = jit_compile or keras.backend.backend() == "jax"
    model.compile(optimizer=fitting.make_optimizer(config, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                                   initial_learning_rate=learning_rate),
                  loss=fitting.make_loss(config), metrics=["accuracy"], jit_compile=jit_compile)


def extra_callbacks(params: Params, *, model_name: str, run_id: str, project_root: Path) -> list:
    if not params.training.tensorboard:
        return []
    log_dir = Path(project_root) / "logs" / "tensorboard" / model_name / run_id
    log.info("TensorBoard logs in %s (tensorboard --logdir logs/tensorboard)", log_dir)
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir))]


def training_callbacks(params: Params, config: FitConfig, *, resume: fitting.ResumeState, phase: str,
                       logger: fitting.EpochLogger, history: list[dict], model_name: str, run_id: str,
                       project_root: Path, validation: keras.callbacks.Callback | None = None) -> list:
    """Every callback of one training phase, in the order they must run (the one builder all phases use).

    `validation`, when given, computes the val_* logs itself (fitting.ValidateWithPopulationStatistics): it runs
    first, so checkpointing, early stopping, the schedule and the logger all read its figures.
    """
    return [*([validation] if validation else []),
            *fitting.standard_callbacks(config, seed=params.seed, checkpoint_dir=resume.phase_dir(phase),
                                        history=history),
            logger, *extra_callbacks(params, model_name=model_name, run_id=run_id, project_root=project_root),
            *resume.callbacks(phase)]


def fingerprint(params: Params, meta: PreparedMeta, *sections: str) -> dict[str, Any]:
    """Everything that shapes a training run: a resume backup from another fingerprint is discarded."""
    return {"params": runs.stage_params(params, *sections), "data": meta.to_dict()}


def summarize(rows: list[dict[str, Any]], model: keras.Model) -> dict:
    last = rows[-1]
    return {
        "epochs": int(last["epoch"]),
        "parameter_count": int(model.count_params()),
        "final": {key: value for key, value in last.items() if isinstance(value, float)},
        "best_val_accuracy": max(row.get("val_accuracy", 0.0) for row in rows),
        "mean_epoch_seconds": float(np.mean([row["epoch_seconds"] for row in rows])),
    }
