"""One thin script per DVC stage; each parses paths from dvc.yaml and calls into `imgclf`."""

import os

# Quiet by default: a stage log should hold only what a user can act on. IMGCLF_LOG_LEVEL=DEBUG brings back
# TensorFlow's C++ info lines and MLflow's artifact transfer bars (one carriage-return line per file in a log).
if os.environ.get("IMGCLF_LOG_LEVEL", "").upper() != "DEBUG":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any stage imports TensorFlow
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
