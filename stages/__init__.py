"""One thin script per DVC stage; each parses paths from dvc.yaml and calls into `imgclf`."""

import sys

from imgclf import cli

# Quiet by default (no TensorFlow C++ info lines, no MLflow artifact transfer bars): decided here, before any stage
# module imports TensorFlow, so `-v` is read from the command line ahead of argparse (cli.stage parses it).
cli.quiet_unless_verbose(any(argument in cli.VERBOSE_FLAGS for argument in sys.argv[1:]))
