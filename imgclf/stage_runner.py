"""What every stage script shares: argument parsing, logging, and turning user errors into clear exits."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.abc
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import yaml

from imgclf import artifacts
from imgclf.config import DeclaredParams, Params, load_params, params_to_dict
from imgclf.errors import UserError

# A stage that reads every key of params.yaml declares PARAMS = (EVERY_PARAM,); dvc.yaml lists `- params.yaml:`.
EVERY_PARAM = "params.yaml:"
# Exit status of every entry point for a condition the user can fix (after one `error: ...` line).
EXIT_USER_ERROR = 2
# Exit status after Ctrl-C (SIGINT), the shell's convention (128 + 2), after one `error: interrupted` line.
EXIT_INTERRUPTED = 130
INTERRUPTED_MESSAGE = ("interrupted; run the same command again to resume (a training stage goes on after its last "
                       "finished epoch)")
# Set to a file, each stage appends one JSON line {"stage", "declared", "read"}: the params keys it really read
# (tests/test_deps.py compares them with PARAMS, so a declared key no code reads is found too).
PARAMS_TRACE_ENV = "IMGCLF_PARAMS_TRACE"
# Log level of the stages and `python -m imgclf`; DEBUG (or `-v`) also lets TensorFlow and MLflow say everything.
LOG_LEVEL_ENV = "IMGCLF_LOG_LEVEL"
VERBOSE_FLAGS = ("-v", "--verbose")
VERBOSE_HELP = ("show everything: debug logs, TensorFlow's start-up and C++ info lines, MLflow's info lines and "
                "artifact transfer bars")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Conditions a user can fix, shown as one line without a traceback; anything else is a bug and keeps it.
_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def quiet_unless_verbose(verbose: bool) -> None:
    """Quiet by default: a log should hold only what a user can act on. Called before TensorFlow or MLflow load,
    since both read these variables once, at import. `verbose` (or IMGCLF_LOG_LEVEL=DEBUG) keeps their detail."""
    if verbose:
        os.environ[LOG_LEVEL_ENV] = "DEBUG"  # also for the processes this one starts (`imgclf smoke` runs dvc)
    if os.environ.get(LOG_LEVEL_ENV, "").upper() != "DEBUG":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ info or warning lines (CPU features, ...)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one CR-redrawn line per file
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no "Creating initial MLflow database tables"
        # TensorFlow's Python warnings about its own internals: "N out of the last N calls ... triggered
        # tf.function retracing" when evaluate packages two models in one process (MLflow predicts their input
        # examples). Nothing a user can act on; errors still show.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        if "tensorflow" not in sys.modules and not any(isinstance(finder, _TensorFlowStartUp)
                                                       for finder in sys.meta_path):
            sys.meta_path.insert(0, _TensorFlowStartUp())


# TF_CPP_MIN_LOG_LEVEL: the least severe C++ log line TensorFlow shows (0 info, 1 warning, 2 error, 3 fatal).
_TF_SEVERITIES = "IWEF"
# Abseil's line format: severity letter, date, time, thread, file:line]. TensorFlow 2.21 logs through Abseil.
_ABSL_LINE = re.compile(rb"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
# Abseil's notice before the first line logged before absl::InitializeLog (TensorFlow never calls it).
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def tensorflow_start_up_lines(output: bytes, min_log_level: int) -> bytes:
    """`output` (what loading TensorFlow wrote to stderr) without Abseil's lines below TF_CPP_MIN_LOG_LEVEL and
    without Abseil's notice that logging was not initialised (level 1 and up); every other line is kept.

    Why: TensorFlow 2.21 applies TF_CPP_MIN_LOG_LEVEL in a static initialiser of libtensorflow_framework.so
    (logging_initializer.cc) that runs after another one (threadpool_device.cc) has already asked whether oneDNN
    is on, which logs "oneDNN custom operations are on ..." at INFO; the profiler plugin, a second library with its
    own copy of Abseil, never applies it. So two INFO lines and two notices print at any level, and only
    TF_ENABLE_ONEDNN_OPTS=0, which turns oneDNN off (other numerics, slower), stops them at the source."""
    if min_log_level <= 0:
        return output
    hidden = _TF_SEVERITIES[:min(min_log_level, len(_TF_SEVERITIES) - 1)]
    kept = []
    for line in output.splitlines(keepends=True):
        match = _ABSL_LINE.match(line)
        if line.rstrip(b"\r\n") == _ABSL_NOTICE or (match and match["severity"].decode() in hidden):
            continue
        kept.append(line)
    return b"".join(kept)


@contextlib.contextmanager
def _stderr_filtered(keep: Callable[[bytes], bytes]) -> Iterator[None]:
    """File descriptor 2 goes to a temporary file for the block (C++ code writes there, not to sys.stderr); then
    `keep(what was written)` goes to the real stderr, in order. Without a usable stderr, nothing is filtered."""
    with contextlib.ExitStack() as stack:
        try:
            saved = os.dup(2)
            stack.callback(os.close, saved)
            capture = stack.enter_context(tempfile.TemporaryFile())
        except OSError:
            yield
            return
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            capture.seek(0)
            remaining = memoryview(keep(capture.read()))
            while remaining:
                remaining = remaining[os.write(2, remaining):]


class _TensorFlowStartUp(importlib.abc.MetaPathFinder):
    """Loads `tensorflow` (whoever imports it first: keras, a stage) with its start-up lines filtered by
    `tensorflow_start_up_lines`, as TF_CPP_MIN_LOG_LEVEL asks; then steps aside (the libraries load once)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):  # another thread's import got here first
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module  # this spec's own loader object: patching it changes no other import

        def exec_module_filtered(module) -> None:
            try:
                min_log_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
            except ValueError:
                min_log_level = 0
            with _stderr_filtered(lambda output: tensorflow_start_up_lines(output, min_log_level)):
                exec_module(module)

        spec.loader.exec_module = exec_module_filtered
        return spec


def yaml_problem(error: yaml.YAMLError) -> str:
    """`expected ',' or ']' at line 2, column 1`: the gist of a YAML syntax error, on one line."""
    problem = getattr(error, "problem", None) or str(error)
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for one that is a bug."""
    if isinstance(error, yaml.YAMLError):
        message = f"not valid YAML: {yaml_problem(error)}; fix the file"
    elif isinstance(error, OSError) and error.errno == errno.ENOSPC:
        message = f"no space left on {error.filename or os.getcwd()}; free some space and run it again"
    elif isinstance(error, OSError) and error.errno == errno.EROFS:
        message = f"{error.filename or os.getcwd()} is on a read-only file system; write somewhere else"
    elif isinstance(error, (UserError, artifacts.MetadataError, *_PATH_ERRORS)):
        message = str(error)
    else:
        return None
    return " ".join(message.split())  # one line, even for a message quoting a multi-line parser error


def exit_on_user_error(body: Callable[[], object]) -> object:
    """Run `body`; an error the user can fix becomes `error: <one line>` on stderr and exit status 2, and Ctrl-C
    `error: interrupted; ...` and status 130 (outputs are written atomically: none is left half-written)."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"error: {INTERRUPTED_MESSAGE}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def stage(description: str, declared_params: Sequence[str], paths: dict[str, str],
          body: Callable[[DeclaredParams, argparse.Namespace], object], argv: list[str] | None = None,
          optional: Sequence[str] = (), prepared: Sequence[str] = ()) -> None:
    """Run a stage: `--params` plus one `--<name> PATH` per entry of `paths` (required, given by dvc.yaml, except
    the names in `optional`, None when not given: an input added later, which older callers do not pass).

    `declared_params` are the params keys the stage reads (the stage module's PARAMS, which dvc.yaml must list
    exactly: tests/code/test_deps.py); each must name a section or a key of params.yaml. `body` gets the params
    restricted to them (`config.DeclaredParams`): reading any other key is an error.

    `prepared` names the entries of `paths` that are prepared data directories. Each one's metadata is read before
    `body` runs, so a missing or broken one is named, with the stage to run, in well under a second; `body`
    imports what it needs itself, after that (TensorFlow and Keras cost 8-13 s of CPU before a stage could say
    that its input is absent)."""
    unknown = set(prepared) - set(paths)
    if unknown:
        raise ValueError(f"prepared names {sorted(unknown)}, which are not among the stage's paths {sorted(paths)}")
    check_declared(declared_params)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, help_text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=name not in optional,
                            help=help_text)
    parser.add_argument(*VERBOSE_FLAGS, action="store_true", help=VERBOSE_HELP)
    arguments = parser.parse_args(argv)
    quiet_unless_verbose(arguments.verbose)  # stages/__init__.py did this before the imports; -v may come from argv
    logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO").upper(), format=LOG_FORMAT)
    name = Path(sys.argv[0]).stem  # `python -m stages.download` runs stages/download.py
    reads: set[str] = set()
    declared = frozenset(params_to_dict(Params()) if EVERY_PARAM in declared_params else declared_params)

    def run() -> None:
        params = load_params(arguments.params)
        for path_name in prepared:
            artifacts.read_prepared_meta(getattr(arguments, path_name))
        body(DeclaredParams(params, stage=name, declared=declared, reads=reads), arguments)
        if os.environ.get(PARAMS_TRACE_ENV):
            with open(os.environ[PARAMS_TRACE_ENV], "a", encoding="utf-8") as trace:
                trace.write(json.dumps({"stage": name, "declared": sorted(declared_params), "read": sorted(reads)})
                            + "\n")

    exit_on_user_error(run)


def project_root() -> Path:
    """The directory holding dvc.yaml: stages run from there (DVC's working directory)."""
    return Path.cwd()


def check_declared(keys: Sequence[str]) -> None:
    """Every declared key names a section or a `section.key` of the params (a misspelt declaration fails loudly)."""
    known = params_to_dict(Params())
    for key in keys:
        if key == EVERY_PARAM:
            continue
        section, _, field = key.partition(".")
        if section not in known or (field and (not isinstance(known[section], dict) or field not in known[section])):
            raise ValueError(f"the stage declares params key {key!r}, which params.yaml does not have")
