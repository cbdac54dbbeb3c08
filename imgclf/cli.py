"""What every stage script shares: argument parsing, logging, and turning user errors into clear exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from imgclf import artifacts
from imgclf.config import Params, load_params, params_to_dict
from imgclf.errors import UserError

# Input a user can fix: shown as one line, no traceback. A missing file names the stage to run first.
_USER_ERRORS = (UserError, FileNotFoundError, artifacts.MetadataError)


def stage(description: str, declared_params: Sequence[str], paths: dict[str, str],
          body: Callable[[Params, argparse.Namespace], object], argv: list[str] | None = None) -> None:
    """Run a stage: `--params` plus one `--<name> PATH` per entry of `paths` (all required, given by dvc.yaml).

    `declared_params` are the params keys the stage reads (the stage module's PARAMS, which dvc.yaml must list
    exactly: tests/code/test_deps.py); each must name a section or a key of params.yaml."""
    check_declared(declared_params)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, help_text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True, help=help_text)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("IMGCLF_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        body(load_params(arguments.params), arguments)
    except _USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def project_root() -> Path:
    """The directory holding dvc.yaml: stages run from there (DVC's working directory)."""
    return Path.cwd()


def check_declared(keys: Sequence[str]) -> None:
    """Every declared key names a section or a `section.key` of the params (a misspelt declaration fails loudly)."""
    known = params_to_dict(Params())
    for key in keys:
        section, _, field = key.partition(".")
        if section not in known or (field and (not isinstance(known[section], dict) or field not in known[section])):
            raise ValueError(f"the stage declares params key {key!r}, which params.yaml does not have")
