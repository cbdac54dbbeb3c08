"""The `imgclf` command line: tools around the DVC pipeline."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from imgclf import artifacts

DEFAULT_META = Path(artifacts.PREPARED_DIR) / artifacts.META_FILE
MODEL_HELP = ("a .keras file (with --meta) or an MLflow model URI: runs:/<run_id>/model, "
              "models:/imgclf-transfer@champion (store: MLFLOW_TRACKING_URI, else ./mlflow.db)")
# `imgclf ui` serves one user's browser: two server processes answer its parallel requests. MLflow's default of four
# (each importing MLflow) costs 13-15 CPU-seconds to start against 7 for two, on 2 cores (BENCHMARKS.md).
UI_WORKERS = 2


def main(argv: list[str] | None = None) -> None:
    from imgclf import stage_runner  # light: no TensorFlow or MLflow, which must not load before quiet_unless_verbose

    parser = argparse.ArgumentParser(prog="imgclf", description=__doc__)
    parser.add_argument(*stage_runner.VERBOSE_FLAGS, action="store_true", help=stage_runner.VERBOSE_HELP)
    # `-v` before or after the command; SUPPRESS, or a command's default would overwrite a `-v` given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(*stage_runner.VERBOSE_FLAGS, action="store_true", default=argparse.SUPPRESS,
                         help=stage_runner.VERBOSE_HELP)
    command = functools.partial(parser.add_subparsers(dest="command", required=True).add_parser, parents=[verbose])
    smoke = command("smoke", help="run every stage on tiny synthetic data in a scratch copy")
    smoke.add_argument("--dir", type=Path, default=Path("smoke"), help="where the copy goes (default: smoke/)")
    check = command("check-params", help="validate a params file and print it resolved")
    check.add_argument("path", nargs="?", type=Path, default=Path("params.yaml"))
    finder = command("lr-find", help="learning-rate finder: loss against an exponentially rising rate")
    finder.add_argument("--model", choices=artifacts.MODEL_NAMES, default="scratch")
    finder.add_argument("--params", type=Path, default=Path("params.yaml"))
    finder.add_argument("--data", type=Path, default=Path(artifacts.PREPARED_DIR), help="prepared data directory")
    finder.add_argument("--features", type=Path, default=Path(artifacts.FEATURES_DIR),
                        help="cached features (transfer)")
    finder.add_argument("--out", type=Path, default=Path(artifacts.LR_FIND_DIR), help="where the plot and CSV go")
    finder.add_argument("--steps", type=int, default=100, help="batches in the sweep")
    finder.add_argument("--start", type=float, default=1e-7)
    finder.add_argument("--end", type=float, default=10.0)
    exp_args = command("exp-args", help="turn a params profile into `dvc exp run -S` arguments, shell-quoted: "
                                       'eval "dvc exp run $(imgclf exp-args PROFILE)"')
    exp_args.add_argument("profile", type=Path, help="YAML overrides of params.yaml, e.g. profiles/scratch_best.yaml")
    predict = command("predict", help="classify image files or folders with a trained model")
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files, or folders (recursive)")
    predict.add_argument("--model", required=True, help=MODEL_HELP)
    predict.add_argument("--meta", type=Path, default=DEFAULT_META,
                         help=f"meta.json of the model's prepared data, for a .keras model (default: {DEFAULT_META})")
    predict.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5, at most all)")
    predict.add_argument("--format", choices=artifacts.PREDICTION_FORMATS, default="table", dest="output_format")
    predict.add_argument("--output", type=Path, help="write the predictions to this file (default: stdout)")
    predict.add_argument("--score-bars", type=Path, metavar="DIR", help="write one class-score PNG per image here")
    ui = command("ui", help="start `mlflow ui` on the project's store, opening on model training (not GenAI), and "
                            "print the address of the experiment's training runs")
    ui.add_argument("--params", type=Path, default=Path("params.yaml"), help="names the experiment (mlflow.experiment)")
    ui.add_argument("--port", type=_port, default=5000)
    ui.add_argument("--address-only", action="store_true", help="print the address, start nothing")
    ui.add_argument("--workers", type=_positive, default=UI_WORKERS,
                    help=f"server processes (default {UI_WORKERS}: one browser's requests; MLflow's default is 4)")
    export = command("export", help="write a TensorFlow SavedModel for TF Serving (raw 0-255 pixels in)")
    export.add_argument("--model", required=True, help=MODEL_HELP)
    export.add_argument("--meta", type=Path, default=DEFAULT_META,
                        help=f"meta.json of the model's prepared data, for a .keras model (default: {DEFAULT_META})")
    export.add_argument("--out", type=Path, required=True,
                        help="the SavedModel directory (for TF Serving: <model base path>/<version>)")
    export.add_argument("--force", action="store_true",
                        help="replace a non-empty --out directory that holds an earlier export")
    arguments = parser.parse_args(argv)
    stage_runner.quiet_unless_verbose(arguments.verbose)
    if arguments.verbose:  # by default only warnings show, as before: the commands print what they found
        logging.basicConfig(level=logging.DEBUG, format=stage_runner.LOG_FORMAT)

    # One policy for every subcommand: a condition the user can fix is one `error:` line and exit status 2.
    sys.exit(stage_runner.exit_on_user_error(lambda: _run(arguments)) or 0)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _run(arguments: argparse.Namespace) -> int:
    if arguments.command in ("predict", "export"):
        return _serve_command(arguments)
    if arguments.command == "smoke":
        from imgclf import fileio, smoke_copy

        seconds = smoke_copy.smoke(arguments.dir, source_root=Path.cwd())
        metrics = fileio.read_json(arguments.dir / "results" / "evaluate" / artifacts.METRICS_FILE)
        for model, values in metrics.items():
            print(f"{model:>9}: test accuracy {values['accuracy']:.3f}")
        print(f"smoke run: all stages in {seconds:.1f} s (outputs in {arguments.dir}/)")
    elif arguments.command == "lr-find":
        from imgclf import config
        from imgclf.training import lr_finder

        suggestions = lr_finder.run(config.load_params(arguments.params), model_name=arguments.model,
                                    prepared_dir=arguments.data, features_dir=arguments.features,
                                    out_dir=arguments.out, steps=arguments.steps, start=arguments.start,
                                    end=arguments.end)
        print(f"suggested learning rate: {suggestions['steepest']:.2e} (steepest descent); "
              f"{suggestions['min_loss_over_10']:.2e} (minimum loss / 10)")
        print(f"plot: {arguments.out / artifacts.lr_find_file(arguments.model, '.png')}")
    elif arguments.command == "exp-args":
        from imgclf import config, smoke_copy

        if not arguments.profile.is_file():
            raise config.ConfigError(f"{arguments.profile}: profile not found; give a YAML file of params.yaml "
                                     "overrides, e.g. profiles/scratch_best.yaml")
        overrides = config.read_params_yaml(arguments.profile)
        if not isinstance(overrides, dict):
            raise config.ConfigError(f"{arguments.profile}: a profile is a mapping of params.yaml sections "
                                     "to overrides, e.g. `scratch: {epochs: 10}`")
        base = config.read_params_yaml("params.yaml")
        config.params_from_dict(smoke_copy.merge(base, overrides), source=str(arguments.profile))
        flat = config.flatten(overrides)
        # Shell-quoted, for `eval "dvc exp run $(imgclf exp-args ...)"`: a value with a space or a `*` (data.path)
        # stays one argument, never split into words or expanded as a glob.
        settings = [f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in flat.items()]
        print(" ".join(f"-S {shlex.quote(setting)}" for setting in settings))
    elif arguments.command == "ui":
        from imgclf import config, tracking_ui
        from imgclf.tracking import store

        uri = store.tracking_uri(Path.cwd())
        experiment_id = store.ui_experiment_id(uri, config.load_params(arguments.params).mlflow.experiment)
        if not arguments.address_only:
            tracking_ui.require_installed()
        print(f"http://127.0.0.1:{arguments.port}/#{store.runs_route(experiment_id)}", flush=True)
        if not arguments.address_only:  # MLflow's server, its UI opening on the experiment's runs (tracking_ui)
            os.execve(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                       "--port", str(arguments.port), "--workers", str(arguments.workers),
                                       "--app-name", tracking_ui.APP_NAME],
                      tracking_ui.server_environment(os.environ, experiment_id))
    elif arguments.command == "check-params":
        from imgclf import config

        print(json.dumps(config.params_to_dict(config.load_params(arguments.path)), indent=2))
    return 0


def _serve_command(arguments: argparse.Namespace) -> int:
    """`predict` and `export`: the exit code."""
    from imgclf.serving import predict, serving

    if arguments.command == "predict":
        return predict.run(arguments.paths, model=arguments.model, meta=arguments.meta, top_k=arguments.top_k,
                           output_format=arguments.output_format, output=arguments.output,
                           score_bars=arguments.score_bars, project_root=Path.cwd())
    serving.check_export_target(arguments.out, force=arguments.force)  # before loading: a mistake costs nothing
    classifier = serving.load_classifier(arguments.model, meta=arguments.meta, project_root=Path.cwd())
    out = serving.export_saved_model(classifier, arguments.out, force=arguments.force)
    print(f"SavedModel in {out} (endpoint `serve`: float32 pixels 0-255, shape "
          f"(batch, {classifier.preprocessing.image_size}, {classifier.preprocessing.image_size}, "
          f"{classifier.preprocessing.channels}))")
    return 0


if __name__ == "__main__":
    main()
