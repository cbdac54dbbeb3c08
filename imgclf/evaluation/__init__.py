"""Evaluation phase (evaluate, analyze stages): metrics, calibration, the model comparison, report and plots."""
