"""What the MLproject entry points run: the DVC pipeline (or one stage) with params overrides, and predict.

`mlflow run . -e main -P overrides="scratch.epochs=1 transfer.backbone=mobilenet_v2"` runs
`python -m imgclf.pipeline run --overrides ...`, which becomes `dvc exp run -S scratch.epochs=1
-S transfer.backbone=mobilenet_v2` in a git repository (an experiment, params.yaml untouched) and plain
`dvc repro` when there are no overrides. The stages see MLFLOW_RUN_ID from `mlflow run` and nest their runs
under its run (imgclf.tracking), which this module names after the DVC experiment once the pipeline is done.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

STAGES = ("check_params", "download", "preprocess", "train_scratch", "extract_features", "train_transfer", "evaluate",
          "analyze")
CHAMPION = "champion"  # the predict entry point's default model: whichever registered model holds the alias


class PipelineError(Exception):
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
    if stage is not None and stage not in STAGES:
        raise PipelineError(f"unknown stage {stage!r}; one of: {', '.join(STAGES)}")
    targets = [stage] if stage else []
    if not overrides and not name:
        return [_dvc(), "repro", *targets]
    if not git:
        raise PipelineError("overrides and experiment names need a git repository with a commit (they run "
                            "`dvc exp run`): `git init && git add . && git commit`, or edit params.yaml and run "
                            "without overrides")
    command = [_dvc(), "exp", "run", *(["--name", name] if name else [])]
    for item in overrides:
        command += ["-S", item]
    return command + targets


def _dvc() -> str:
    """The dvc beside this interpreter (the project's environment), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def _name_group_run(root: Path, *, stage: str | None, overrides: list[str]) -> None:
    """Give the `mlflow run` run (the group) a readable name and the overrides, from its child runs' tags."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    import mlflow

    from imgclf import tracking

    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(root))
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


def run_pipeline(root: Path, *, overrides: str = "", stage: str | None = None, name: str | None = None) -> int:
    """Run the pipeline (or `stage` and what it needs that changed) in `root`; return dvc's exit status."""
    items = parse_overrides(overrides)
    command = dvc_command(overrides=items, stage=stage or None, name=name or None, git=is_git_repository(root))
    print("+ " + shlex.join(command), flush=True)
    status = subprocess.run(command, cwd=root, check=False).returncode
    if status == 0:
        _name_group_run(root, stage=stage or None, overrides=items)
    return status


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

        from imgclf import tracking

        mlflow.set_tracking_uri(tracking.tracking_uri(root))
        model = tracking.champion_uri()
    return [sys.executable, "-m", "imgclf", "predict", *paths, "--model", model, "--format", output_format,
            "--top-k", str(int(float(top_k)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imgclf.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the DVC pipeline, or one stage, with optional params overrides")
    run.add_argument("--overrides", default="", help='space-separated params.yaml overrides, "key=value ..."')
    run.add_argument("--stage", default="", help=f"run this stage (and what it needs that changed): {STAGES}")
    run.add_argument("--name", default="", help="DVC experiment name (implies dvc exp run)")
    predict = commands.add_parser("predict", help="classify images with a model path, URI or 'champion'")
    predict.add_argument("--images", required=True, help="space-separated image files or folders")
    predict.add_argument("--model", default=CHAMPION, help="a .keras file, an MLflow model URI, or 'champion'")
    predict.add_argument("--format", dest="output_format", default="table", choices=["table", "json", "csv"])
    predict.add_argument("--top-k", type=float, default=5, help="classes listed per image")
    arguments = parser.parse_args(argv)
    root = Path.cwd()
    try:
        if arguments.command == "run":
            sys.exit(run_pipeline(root, overrides=arguments.overrides, stage=arguments.stage or None,
                                  name=arguments.name or None))
        command = predict_command(images=arguments.images, model=arguments.model,
                                  output_format=arguments.output_format, top_k=arguments.top_k, root=root)
        sys.exit(subprocess.run(command, cwd=root, check=False).returncode)
    except (PipelineError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
