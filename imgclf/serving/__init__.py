"""Serving: a trained model as an image classifier (MLflow pyfunc, `imgclf predict`, `imgclf export`)."""
