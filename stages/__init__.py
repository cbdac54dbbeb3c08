"""One thin script per DVC stage; each parses paths from dvc.yaml and calls into `imgclf`."""

import sys

from imgclf import stage_runner

# Quiet by default (no TensorFlow start-up or C++ info lines, no MLflow info lines): decided here, before any stage
# module imports TensorFlow, so `-v` is read from the command line ahead of argparse (stage_runner.stage parses it).
stage_runner.quiet_unless_verbose(any(argument in stage_runner.VERBOSE_FLAGS for argument in sys.argv[1:]))
