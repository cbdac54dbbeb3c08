"""What the MLproject entry points run: the DVC pipeline (or one stage) with params overrides, and predict.

`mlflow run . -e main -P overrides="scratch.epochs=1 transfer.backbone=mobilenet_v2"` runs
`python -m imgclf.entry_points run --overrides ...`, which becomes `dvc exp run -S scratch.epochs=1
-S transfer.backbone=mobilenet_v2` in a git repository (an experiment, params.yaml untouched) and plain
`dvc repro` when there are no overrides. The stages see MLFLOW_RUN_ID from `mlflow run` and nest their runs
under its run (imgclf.tracking), which this module names after the DVC experiment once the pipeline is done.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from imgclf import stage_runner
from imgclf.artifacts import (  # CHAMPION: predict's default, the model holding that alias
    CHAMPION,
    DVC_FILE,
    PREDICTION_FORMATS,
)
from imgclf.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# DVC's command line, run by this interpreter (the project's environment) without the warnings `dvc exp run` gives
# on a fresh clone for outputs no stage has made yet (imgclf/dvc_cli.py).
DVC = (sys.executable, "-m", "imgclf.dvc_cli")


def stage_names(root: Path = PROJECT_ROOT) -> tuple[str, ...]:
    """The pipeline's stages in dvc.yaml order: the one list (MLproject's entry points are tested against it)."""
    return tuple(yaml.safe_load((Path(root) / DVC_FILE).read_text(encoding="utf-8"))["stages"])


class PipelineError(UserError):
    """A mistake in the entry point's parameters: printed as one line, exit status 2."""


def parse_overrides(text: str) -> list[str]:
    """`"a.b=1 c=[1,2]"` -> `["a.b=1", "c=[1,2]"]` (shell-style quoting for values with spaces)."""
    try:
        items = shlex.split(text or "")
    except ValueError as error:
        raise PipelineError(f"overrides {text!r}: {error}") from None
    for item in items:
        key, equals, _ = item.partition("=")
        if not equals or not key:
            raise PipelineError(f"override {item!r} is not key=value; write them as "
                                "overrides=\"scratch.epochs=1 transfer.backbone=mobilenet_v2\" (params.yaml keys)")
    return items


def is_git_repository(root: Path) -> bool:
    """True when `root` is in a git work tree with at least one commit (what `dvc exp run` needs)."""
    result = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=root, capture_output=True,
                            check=False)
    return result.returncode == 0


def dvc_command(*, overrides: list[str], stage: str | None, name: str | None, git: bool) -> list[str]:
    """`dvc exp run [-n NAME] -S k=v ... [STAGE]` for an experiment, `dvc repro [STAGE]` otherwise."""
    if stage is not None and stage not in stage_names():
        raise PipelineError(f"unknown stage {stage!r}; one of: {', '.join(stage_names())}")
    targets = [stage] if stage else []
    if not overrides and not name:
        return [*DVC, "repro", *targets]
    if not git:
        raise PipelineError("overrides and experiment names need a git repository with a commit (they run "
                            "`dvc exp run`): `git init && git add . && git commit`, or edit params.yaml and run "
                            "without overrides")
    command = [*DVC, "exp", "run", *(["--name", name] if name else [])]
    for item in overrides:
        command += ["-S", item]
    return command + targets


def _name_group_run(root: Path, *, stage: str | None, overrides: list[str]) -> None:
    """Give the `mlflow run` run (the group) a readable name and the overrides, from its child runs' tags."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    import mlflow

    from imgclf.tracking import store

    client = mlflow.MlflowClient(tracking_uri=store.tracking_uri(root))
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    experiments = sorted({child.data.tags["dvc.experiment"] for child in children
                          if "dvc.experiment" in child.data.tags})
    name = "pipeline" + (f"-{stage}" if stage else "") + (f"-{experiments[0]}" if len(experiments) == 1 else "")
    client.set_tag(run_id, "mlflow.runName", name)
    client.set_tag(run_id, "stage", stage or "pipeline")
    client.set_tag(run_id, "model", "group")
    client.set_tag(run_id, "overrides", " ".join(overrides) or "(none)")
    if len(experiments) == 1:
        client.set_tag(run_id, "dvc.experiment", experiments[0])


def _record_predict_run(root: Path, *, command: list[str], output: str, output_format: str, exit_code: int) -> None:
    """Name the `mlflow run -e predict` run after the model it used and log what it did: the images, the model
    URI (the champion resolved), the predictions."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    import mlflow

    from imgclf.tracking import store

    model = command[command.index("--model") + 1]
    images = command[command.index("predict") + 1:command.index("--model")]
    client = mlflow.MlflowClient(tracking_uri=store.tracking_uri(root))
    short_model = model.removeprefix("models:/").removeprefix("runs:/").replace("/", "-")
    client.set_tag(run_id, "mlflow.runName", f"predict-{Path(short_model).name}")
    client.set_tag(run_id, "stage", "predict")
    client.set_tag(run_id, "model_uri", model)
    client.set_tag(run_id, "images", " ".join(images)[:5000])
    client.log_metric(run_id, "exit_code", exit_code)
    extension = "txt" if output_format == "table" else output_format
    client.log_text(run_id, output, f"predictions.{extension}")


def run_pipeline(root: Path, *, overrides: str = "", stage: str | None = None, name: str | None = None) -> int:
    """Run the pipeline (or `stage` and what it needs that changed) in `root`; return dvc's exit status."""
    items = parse_overrides(overrides)
    command = dvc_command(overrides=items, stage=stage or None, name=name or None, git=is_git_repository(root))
    print("+ " + shlex.join(command), flush=True)
    status = _run_dvc(command, root)
    if status == 0:
        _name_group_run(root, stage=stage or None, overrides=items)
    return status


# DVC's last line when a stage's command fails; it exits 255 whatever the stage's own status was.
_STAGE_FAILED = re.compile(r"^ERROR: failed to reproduce '(?P<stage>[^']+)'.*, exited with (?P<status>\d+)$")


def _run_dvc(command: list[str], root: Path) -> int:
    """Run dvc with its and the stages' output passing through live; return its exit status.

    A stage's refusal of something the user can fix (one `error: ...` line and exit 2, imgclf/stage_runner.py) becomes a
    `PipelineError` naming the stage, so this entry point exits 2 with that line too, not DVC's 255 after its
    "failed to reproduce" line. Those lines are held back until the end; any other failure shows them then."""
    held: list[str] = []
    with subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE, text=True, bufsize=1) as process:
        for line in process.stderr:
            if line.startswith(("error: ", "ERROR: ")):
                held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
    if process.returncode == 0:
        sys.stderr.writelines(held)
        return 0
    failed = next((match for line in held if (match := _STAGE_FAILED.match(line.rstrip("\n")))), None)
    refusal = next((line for line in held if line.startswith("error: ")), None)
    if failed and failed["status"] == str(stage_runner.EXIT_USER_ERROR) and refusal:
        raise PipelineError(f"stage '{failed['stage']}': {refusal.removeprefix('error: ').strip()}")
    sys.stderr.writelines(held)
    return process.returncode


def predict_command(*, images: str, model: str, output_format: str, top_k: float, root: Path) -> list[str]:
    """`python -m imgclf predict PATH... --model URI --format F --top-k K`; model `champion` resolves to the
    registered model that holds the alias."""
    paths = shlex.split(images or "")
    if not paths:
        raise PipelineError("images: give one or more image files or folders, e.g. images=\"a.jpg photos/\"")
    if float(top_k) != int(float(top_k)) or int(float(top_k)) < 1:
        raise PipelineError(f"top_k must be a whole number >= 1, not {top_k}")
    if model == CHAMPION:
        import mlflow

        from imgclf.tracking import recovery, registry, store

        mlflow.set_tracking_uri(store.tracking_uri(root))
        recovery.reconcile(root)  # never serve a champion that an interrupted evaluation chose
        model = registry.champion_uri()
    return [sys.executable, "-m", "imgclf", "predict", *paths, "--model", model, "--format", output_format,
            "--top-k", str(int(float(top_k)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imgclf.entry_points", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the DVC pipeline, or one stage, with optional params overrides")
    run.add_argument("--overrides", default="", help='space-separated params.yaml overrides, "key=value ..."')
    run.add_argument("--stage", default="", help="run this stage (and what it needs that changed): one of dvc.yaml's")
    run.add_argument("--name", default="", help="DVC experiment name (implies dvc exp run)")
    predict = commands.add_parser("predict", help="classify images with a model path, URI or 'champion'")
    predict.add_argument("--images", required=True, help="space-separated image files or folders")
    predict.add_argument("--model", default=CHAMPION, help="a .keras file, an MLflow model URI, or 'champion'")
    predict.add_argument("--format", dest="output_format", default="table", choices=PREDICTION_FORMATS)
    predict.add_argument("--top-k", type=float, default=5, help="classes listed per image")
    arguments = parser.parse_args(argv)
    # MLflow here, TensorFlow in the stages: IMGCLF_LOG_LEVEL=DEBUG shows everything
    stage_runner.quiet_unless_verbose(False)
    root = Path.cwd()

    def body() -> int:
        if arguments.command == "run":
            return run_pipeline(root, overrides=arguments.overrides, stage=arguments.stage or None,
                                name=arguments.name or None)
        command = predict_command(images=arguments.images, model=arguments.model,
                                  output_format=arguments.output_format, top_k=arguments.top_k, root=root)
        result = subprocess.run(command, cwd=root, check=False, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(result.stdout)
        _record_predict_run(root, command=command, output=result.stdout, output_format=arguments.output_format,
                            exit_code=result.returncode)
        return result.returncode

    # The policy of every entry point: a UserError (PipelineError, TrackingStoreError, RegistryError...) is one
    # `error:` line and exit 2; anything else is a bug and keeps its traceback.
    sys.exit(stage_runner.exit_on_user_error(body))


if __name__ == "__main__":
    main()
