"""Every metric the project shows, defined once: its key in the evaluate stage's files, its label, how it is
written and which value is better. The report's metrics table, `summary.md` (for CI comments) and `make compare`
(the experiments table) all read these, so a metric is named and rounded the same way wherever it appears."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from imgclf.artifacts import ANALYSIS_DIR, ANALYSIS_SUMMARY_FILE, EVALUATE_DIR, METRICS_FILE

EVALUATE_METRICS = f"{EVALUATE_DIR}/{METRICS_FILE}"  # dvc.yaml `metrics:`, one section per model
ANALYSIS_SUMMARY = f"{ANALYSIS_DIR}/{ANALYSIS_SUMMARY_FILE}"  # the paired comparison of the two models


def format_p_value(p: float) -> str:
    """3 decimals, or scientific notation below 0.001 so a tiny p-value never reads as 0."""
    return f"{p:.1e}" if 0 < p < 1e-3 else f"{p:.3f}"


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str  # dotted, in the model's section of the evaluate stage's metrics (or in the analysis summary)
    label: str  # how the report and summary.md name it
    style: str | Callable[[Any], str]  # a format string, or a function of the value
    better: Callable | None = None  # max or min: the report marks the better model; None: neither is better
    summary: bool = False  # one of the few lines of summary.md
    column: str | None = None  # its `make compare` column title (per model: "scratch <column>")

    def format(self, value: Any) -> str:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "-"
        return self.style(value) if callable(self.style) else self.style.format(value)


# Per model, in the evaluate stage's metrics: the report's metrics table in this order.
MODEL_METRICS = (
    Metric("accuracy", "accuracy", "{:.4f}", max, summary=True, column="acc"),
    Metric("top5_accuracy", "top-5 accuracy", "{:.4f}", max),
    Metric("loss", "loss (cross-entropy)", "{:.4f}", min),
    Metric("macro_precision", "macro precision", "{:.4f}", max),
    Metric("macro_recall", "macro recall", "{:.4f}", max),
    Metric("macro_f1", "macro F1", "{:.4f}", max, summary=True),
    Metric("weighted_precision", "weighted precision", "{:.4f}", max),
    Metric("weighted_recall", "weighted recall", "{:.4f}", max),
    Metric("weighted_f1", "weighted F1", "{:.4f}", max),
    Metric("ece", "ECE (calibration error)", "{:.4f}", min, summary=True),
    Metric("ece_calibrated", "ECE after temperature scaling", "{:.4f}", min, summary=True),
    Metric("images_per_second", "inference images/s", "{:,.0f}", max, summary=True),
    Metric("parameter_count", "parameters", "{:,}"),
    Metric("model_size_mb", "model file (MB)", "{:.1f}"),
)

# Of the pair, in the analysis summary: the headline's difference and its significance.
COMPARISON_METRICS = (
    Metric("accuracy_difference", "transfer − scratch", "{:+.4f}", column="diff"),
    Metric("mcnemar.p_value", "McNemar p", format_p_value, column="McNemar p"),
)


def compare_columns(models: tuple[str, ...]) -> list[tuple[str, str, str, Metric]]:
    """`make compare`'s metric columns: (title, metrics file, dotted key, metric), per model then of the pair."""
    per_model = [(f"{model} {metric.column}", EVALUATE_METRICS, f"{model}.{metric.key}", metric)
                 for metric in MODEL_METRICS if metric.column for model in models]
    return per_model + [(metric.column, ANALYSIS_SUMMARY, metric.key, metric)
                        for metric in COMPARISON_METRICS if metric.column]
