"""What every stage script shares: argument parsing, logging, and turning user errors into clear exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from imgclf.config import ConfigError, Params, load_params

# Errors caused by input a user can fix: shown as one line, no traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every error type whose message tells the user what to do (imported lazily: some pull in TensorFlow)."""
    from imgclf.evaluate import EvaluationError
    from imgclf.models import ModelConfigError
    from imgclf.preprocess import PreprocessError
    from imgclf.sources import DataSourceError

    return (*_USER_ERRORS, DataSourceError, PreprocessError, ModelConfigError, EvaluationError)


def stage(description: str, paths: dict[str, str], body: Callable[[Params, argparse.Namespace], object],
          argv: list[str] | None = None) -> None:
    """Run a stage: `--params` plus one `--<name> PATH` per entry of `paths` (all required, given by dvc.yaml)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, help_text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True, help=help_text)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("IMGCLF_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ banner hides our own messages
    try:
        params = load_params(arguments.params)
        body(params, arguments)
    except _USER_ERRORS as error:
        _fail(error)
    except Exception as error:
        if isinstance(error, user_error_types()):
            _fail(error)
        raise


def _fail(error: BaseException) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def project_root() -> Path:
    """The directory holding dvc.yaml: stages run from there (DVC's working directory)."""
    return Path.cwd()
