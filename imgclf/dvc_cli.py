"""`python -m imgclf.dvc_cli ARGS...`: DVC's command line (`dvc ARGS...`) in this process, less one warning that
asks nothing of the user. The MLproject entry points and scripts/retrain.sh run DVC through it.

Before it runs anything, `dvc exp run` checks out the outputs dvc.lock records for every stage it may run
(dvc/repo/experiments/executor/base.py, `allow_missing=True`). An output of a stage dvc.lock does not record yet
(on a fresh clone: all 14 of them) has no hash to check out, and DVC warns "No file hash info found for '<output>'.
It won't be created." for each one, although the run then builds it. That warning becomes a debug line, shown with
`-v` (`python -m imgclf.dvc_cli -v exp run`); with IMGCLF_LOG_LEVEL=DEBUG it stays a warning. An output whose
hash dvc.lock records but whose data the cache lacks gets other messages, which are left as DVC writes them.

It also vets params.yaml before DVC parses it (`config.check_params_file`: no aliases, bounded size and depth),
since DVC reads it before any stage runs and expands its aliases: a refusal is one `error:` line and status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from imgclf import artifacts, config, stage_runner
from imgclf.errors import ConfigError

# dvc_data/index/checkout.py: the message (a %-format) and the logger it goes to.
NEVER_RECORDED = "No file hash info found for '%s'. It won't be created."
CHECKOUT_LOGGER = "dvc_data.index.checkout"


class NeverRecordedOutputIsDebug(logging.Filter):
    """DVC's warning for an output with no recorded hash, as a debug line (dropped unless DVC logs debug lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != NEVER_RECORDED:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


def main(argv: list[str] | None = None) -> int:
    """Run `dvc ARGV`; its exit status (2 after one `error:` line when params.yaml is refused)."""
    params = Path(artifacts.PARAMS_FILE)  # in the working directory, the project's root, where DVC runs
    if params.is_file():
        try:
            config.check_params_file(params)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return stage_runner.EXIT_USER_ERROR
    from dvc.cli import main as dvc_main

    if os.environ.get(stage_runner.LOG_LEVEL_ENV, "").upper() != "DEBUG":  # IMGCLF_LOG_LEVEL=DEBUG: DVC says everything
        logging.getLogger(CHECKOUT_LOGGER).addFilter(NeverRecordedOutputIsDebug())
    return dvc_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
