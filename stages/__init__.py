"""One thin script per DVC stage; each parses paths from dvc.yaml and calls into `imgclf`."""

import os

# Quiet TensorFlow's C++ info lines before any stage imports it; our own log stays readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
