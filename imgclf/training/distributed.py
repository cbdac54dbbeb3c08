"""`training.distribute: multi_worker`: data-parallel training in several processes, on Keras' own distribution API
over JAX's distributed runtime (docs/scale-out.md). No collective or parameter server of ours: JAX reduces the
gradients (gloo between CPU processes, NCCL between GPUs), Keras shards the global batch over the devices.

Roles. The stage the user runs (`python -m stages.train_scratch`, under TensorFlow like every stage) is the
*launcher*: it starts the workers of this machine as processes running the same command with `KERAS_BACKEND=jax`
and `IMGCLF_PROCESS_ID=k`, waits for them, and fails with one line when one fails (stopping the others, which would
otherwise wait at the next collective). A coordinator on a loopback address (`127.0.0.1:0`, the default: any free
port) means every worker runs here; any other address means this machine runs process 0 and each other machine
runs `KERAS_BACKEND=jax IMGCLF_PROCESS_ID=k python -m stages.train_scratch ...` itself.

Each worker calls `join` first: `keras.distribution.initialize(coordinator, workers, k)` and a `DataParallel`
distribution over every device of every process. Each process reads its own shard of the training images
(`tfdata.make_dataset(shard=...)`) in batches of `batch_size / workers`: one step is the global batch of
`batch_size` images, so the learning rate and its schedule are what one process would use. BatchNorm's batch
statistics are over the global batch (XLA reduces them across the sharded batch axis), and so is the
re-estimation of its moving statistics. Validation feeds every process the whole validation split: the global
batch holds it `workers` times, the same accuracy.

Process 0 is the chief: it alone logs to MLflow and writes the stage's outputs (`model.keras`, history, run.json,
resume state). Saving is a collective in JAX's multi-process runtime (every process must call `model.save` and
the resume backups' `save_weights`), so the others do it too, into their own folder (`worker_dir`) with a
throwaway MLflow store; that folder also holds their resume backups, so a rerun resumes on every machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from imgclf.config import coordinator_address
from imgclf.errors import ModelConfigError, UserError

log = logging.getLogger(__name__)

PROCESS_ID_ENV = "IMGCLF_PROCESS_ID"  # set: this process is worker k of a multi_worker training
COORDINATOR_ENV = "IMGCLF_COORDINATOR"  # the launcher's concrete host:port (training.coordinator may say port 0)
WORKER_DIR_ENV = "IMGCLF_WORKER_DIR"  # where a worker other than the chief writes (default: under the temp dir)
LOG_LEVEL_ENV = "IMGCLF_LOG_LEVEL"  # the stages' log level (imgclf.cli.LOG_LEVEL_ENV)
STOP_GRACE_SECONDS = 10  # the other workers get this long to stop after one failed, then are killed
OUTSIDE_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # a worker stopped from outside


class WorkerFailedError(UserError):
    """A worker of a multi_worker training failed or was killed: the stage stops; a rerun resumes."""


@dataclass(frozen=True)
class Shard:
    """This process's place in a multi_worker training."""

    count: int  # processes in all
    index: int  # this one's process id; 0 is the chief

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def batch_size(self, global_batch: int) -> int:
        return global_batch // self.count

    def steps_per_epoch(self, example_count: int, global_batch: int) -> int:
        """Whole per-process batches in one epoch of this process's shard (each shard holds `count // shards`
        images, the rest of an epoch's shuffle is left out), so every process runs the same steps."""
        return max(1, (example_count // self.count) // self.batch_size(global_batch))

    def as_tuple(self) -> tuple[int, int]:
        return self.count, self.index


def launching(training) -> bool:
    """Whether this process is the stage the user ran with `multi_worker`: it starts the workers, trains nothing."""
    return training.distribute == "multi_worker" and PROCESS_ID_ENV not in os.environ


def launched(training, out_dir: Path) -> bool:
    """Whether this process is the `multi_worker` launcher, in which case the workers have trained to the end
    (`run_workers`) and the chief's outputs are in `out_dir`; False in a worker or a single-process run, which
    train themselves."""
    if not launching(training):
        return False
    run_workers(training, out_dir)
    return True


def is_loopback(coordinator: str) -> bool:
    host = host_port(coordinator)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_port(coordinator: str) -> tuple[str, int]:
    """The params check's parse (config.coordinator_address), as this module's error."""
    try:
        return coordinator_address(coordinator)
    except ValueError as error:
        raise ModelConfigError(str(error)) from None


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def worker_dir(out_dir: Path, index: int) -> Path:
    """Where worker `index` (not the chief) writes its copy of the outputs and its resume backups: the same
    folder for every run of the same stage output on this machine, so a rerun resumes."""
    if os.environ.get(WORKER_DIR_ENV):
        return Path(os.environ[WORKER_DIR_ENV]) / f"worker-{index}"
    key = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"imgclf-workers-{key}" / f"worker-{index}"


def worker_command() -> list[str]:
    """The command line of this stage again (`python -m stages.train_scratch --data ... --out ...`)."""
    return [sys.executable, *sys.orig_argv[1:]]


def launch(training, out_dir: Path) -> list[subprocess.Popen]:
    """Start this machine's workers (all of them, or process 0 alone when the coordinator is another address)."""
    host, port = host_port(training.coordinator)
    local = is_loopback(training.coordinator)
    if not local and port == 0:
        raise ModelConfigError("training.coordinator: workers on other machines need a fixed port (e.g. "
                               f"{host}:4455), not port 0")
    coordinator = f"{host}:{port or free_port(host)}"
    indices = range(training.workers) if local else [0]
    gpus = _local_gpus()
    processes = []
    for index in indices:
        environment = {**os.environ, "KERAS_BACKEND": "jax", PROCESS_ID_ENV: str(index),
                       COORDINATOR_ENV: coordinator}
        if len(indices) > 1 and len(gpus) >= len(indices):  # several GPUs of one machine: one each
            environment["CUDA_VISIBLE_DEVICES"] = gpus[index]
        quiet = index > 0 and environment.get(LOG_LEVEL_ENV, "").upper() != "DEBUG"
        if quiet:  # the chief's epoch lines and logs are the run's; the others say only what goes wrong
            environment[LOG_LEVEL_ENV] = "WARNING"
        processes.append(subprocess.Popen(worker_command(), env=environment,
                                          stdout=subprocess.DEVNULL if quiet else None))
    log.info("multi_worker: %d of %d worker(s) started here, coordinator %s", len(processes), training.workers,
             coordinator)
    if not local:
        log.info("start the other workers: on machine k (1..%d), in its copy of this project: KERAS_BACKEND=jax "
                 "%s=k %s", training.workers - 1, PROCESS_ID_ENV, " ".join(["python", *sys.orig_argv[1:]]))
    return processes


def run_workers(training, out_dir: Path) -> None:
    """Launch the workers and wait for all of them; stop the others and raise `WorkerFailedError` when one fails."""
    processes = launch(training, out_dir)
    # Stopped from outside (dvc queue kill, a CI timeout): stop the workers too, rather than leave them training.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        while True:
            codes = [process.poll() for process in processes]
            failed = [(index, code) for index, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                # A worker killed from outside takes the others down with it (gloo aborts them): name the cause.
                time.sleep(0.5)
                failed = [(index, process.poll()) for index, process in enumerate(processes)
                          if process.poll() not in (None, 0)]
                index, code = min(failed, key=lambda failure: -failure[1] not in OUTSIDE_SIGNALS)
                how = (f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0
                       else f"exited with status {code}")
                raise WorkerFailedError(
                    f"multi_worker training: worker {index} of {training.workers} {how}, so the other workers were "
                    "stopped; run the stage again (dvc repro) to resume from the last finished epoch")
            if all(code == 0 for code in codes):
                break
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(processes)
    if is_loopback(training.coordinator):
        for index in range(1, training.workers):  # the others' copies and resume backups: done with
            shutil.rmtree(worker_dir(out_dir, index), ignore_errors=True)
        with contextlib.suppress(OSError):
            worker_dir(out_dir, 1).parent.rmdir()  # when empty


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _stop(processes: list[subprocess.Popen]) -> None:
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        if process.poll() is None:
            process.kill()
            process.wait()


def _local_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device for device in visible.split(",") if device.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(index) for index, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def join(training) -> Shard | None:
    """In a worker: join the distributed runtime and make `DataParallel` over every process's devices the
    distribution of everything Keras builds from now on. None when this process is not a multi_worker worker."""
    if training.distribute != "multi_worker" or PROCESS_ID_ENV not in os.environ:
        return None
    import keras

    if keras.backend.backend() != "jax":
        raise ModelConfigError(f"training.distribute: multi_worker runs on Keras' JAX backend; this process runs "
                               f"{keras.backend.backend()}: start it with KERAS_BACKEND=jax")
    import jax

    index = int(os.environ[PROCESS_ID_ENV])
    if not 0 <= index < training.workers:
        raise ModelConfigError(f"{PROCESS_ID_ENV}={index}: expected 0 to {training.workers - 1} "
                               f"(training.workers: {training.workers})")
    coordinator = os.environ.get(COORDINATOR_ENV) or training.coordinator
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes reduce over gloo (GPUs: NCCL)
    _cache_compilations(jax)
    keras.distribution.initialize(coordinator, num_processes=training.workers, process_id=index)
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=keras.distribution.list_devices(), auto_shard_dataset=False))  # each process reads its own shard
    shard = Shard(count=training.workers, index=index)
    sys.excepthook = _peer_loss_in_one_line(sys.excepthook, shard)
    log.info("multi_worker: process %d of %d joined %s; devices %s", index, training.workers, coordinator,
             ", ".join(str(device) for device in keras.distribution.list_devices()))
    return shard


COMPILATION_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"  # JAX's own setting; ours below when unset


def _cache_compilations(jax) -> None:
    """Keep XLA's compiled steps on disk (JAX's persistent compilation cache): otherwise every worker compiles the
    training and validation steps again at each start, and a resumed run (or the next experiment of the same
    model) pays it again. The key is the whole computation, the devices and the
    library versions, so a stale entry is never used. JAX_COMPILATION_CACHE_DIR, when set, is the user's choice."""
    if os.environ.get(COMPILATION_CACHE_ENV):
        return
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    jax.config.update("jax_compilation_cache_dir", str(cache_home / "imgclf" / "jax-compilation"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)  # the steps, not every small op


def finish(shard: Shard | None) -> None:
    """End a worker once its outputs are written: flush what it printed and exit at once. Left to the
    interpreter's teardown, the tf.data iterators Keras' JAX trainer holds take 3-20 s to stop their threads,
    while the launcher and the other workers wait. A single process (`shard` None) returns."""
    if shard is None:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# How JAX's runtime reports that another process has gone (its collective's connection, the coordination service).
PEER_LOSS = re.compile(r"Gloo|Connection reset by peer|Connection closed|coordination service|CoordinationService|"
                       r"heartbeat|UNAVAILABLE", re.IGNORECASE)


def _peer_loss_in_one_line(previous, shard: Shard):
    """A worker whose collective failed because another worker went away says so in one line (the launcher then
    names the worker that failed first); any other error keeps its traceback."""
    def hook(kind, error, traceback) -> None:
        if isinstance(error, Exception) and PEER_LOSS.search(str(error)):
            first = str(error).strip().splitlines()[0][:200]
            print(f"multi_worker: worker {shard.index} stopped: it lost the other workers ({first})", file=sys.stderr)
            return
        previous(kind, error, traceback)

    return hook


def outputs(shard: Shard | None, out_dir: Path) -> Path:
    """Where this process writes: the stage's folder for the chief (or a single process), its own for the others."""
    if shard is None or shard.is_chief:
        return Path(out_dir)
    path = worker_dir(out_dir, shard.index)
    path.mkdir(parents=True, exist_ok=True)
    # Never the project's (or the team's) tracking store: a throwaway one beside this worker's outputs.
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{path / 'mlflow.db'}"
    return path


def agreed_start(shard: Shard | None, resume, phase: str) -> int:
    """The epoch a (resumed) phase starts at, the same in every process: each holds its own resume backups, and a
    worker whose folder was lost (or left by another run) would otherwise start elsewhere. When they disagree,
    every process drops its backups of `phase` and starts it afresh."""
    done = resume.completed_epochs(phase)
    if shard is None:
        return done
    everyone = _gather(done)
    if len(set(everyone)) == 1:
        return done
    log.warning("multi_worker: the workers' resume backups end at different epochs (%s); %s starts afresh",
                everyone, phase)
    shutil.rmtree(resume.directory / phase, ignore_errors=True)
    return 0


def everywhere(shard: Shard | None, condition: bool) -> bool:
    """Whether `condition` holds in every process (in one process: whether it holds), e.g. a phase that only
    some workers' resume backups mark finished is trained again by all of them, in step."""
    if shard is None:
        return condition
    return all(_gather(int(condition)))


def _gather(value: int) -> list[int]:
    """Every process's `value`, in process order (a collective: every process must call it)."""
    import numpy as np
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray([value], dtype=np.int32))).ravel().tolist()


def global_batches(batches, shard: Shard | None):
    """`batches` (image batches, or tuples starting with them) as the global batches of all processes: JAX arrays
    sharded over every process's devices (`jax.make_array_from_process_local_data`, as Keras' trainer builds its
    batches), so that a model called on them eagerly (BatchNorm's re-estimation) computes global statistics."""
    if shard is None:
        yield from batches
        return
    import jax
    import keras
    import numpy as np

    distribution = keras.distribution.distribution()
    for batch in batches:
        images = np.asarray(batch[0] if isinstance(batch, (tuple, list)) else batch)
        layout = distribution.get_data_layout(images.shape).backend_layout
        yield jax.make_array_from_process_local_data(layout, images)


def leave(shard: Shard | None) -> None:
    """After the last collective (the model's save): this process alone from here (the chief's MLflow model
    logging loads and runs the model, which must not wait for the other processes)."""
    if shard is not None:
        import keras

        keras.distribution.set_distribution(None)
