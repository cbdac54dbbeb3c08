"""Calibration: does a model's confidence match how often it is right?

Expected calibration error (ECE) over equal-width confidence bins, the per-bin data of a reliability
diagram, and temperature scaling (Guo et al., 2017): one scalar T fitted on the validation split by
minimising the negative log-likelihood, then applied to test scores. Dividing log-probabilities by T > 0
never changes the arg-max, so accuracy is unchanged; only the confidence moves.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize, special, stats

# Log-probabilities of exactly-zero scores (saturated softmax) are clipped here rather than -inf.
_LOG_FLOOR = float(np.log(1e-12))
# Search range of T: from 0.05 (sharpen a lot) to 20 (flatten a lot). A fit at a bound means the validation
# split cannot pin T down (too small, or every image right so sharpening always helps).
TEMPERATURE_BOUNDS = (0.05, 20.0)


@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
    """Per equal-width confidence bin: edges, image count, mean confidence and accuracy (nan when empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, *, bins: int) -> ReliabilityBins:
    """Bin images by top-1 confidence; per bin the share that is right and the mean confidence."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _, _ = stats.binned_statistic(confidence, correct, statistic="count", bins=edges)
    with np.errstate(invalid="ignore"):
        accuracy, _, _ = stats.binned_statistic(confidence, correct, statistic="mean", bins=edges)
        mean_confidence, _, _ = stats.binned_statistic(confidence, confidence, statistic="mean", bins=edges)
    return ReliabilityBins(edges=edges, counts=counts.astype(int), confidence=mean_confidence, accuracy=accuracy)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = 15) -> float:
    """Sum over bins of (share of images in the bin) x |accuracy - mean confidence|; 0 is perfect."""
    binned = reliability_bins(probabilities, labels, bins=bins)
    filled = binned.counts > 0
    if not filled.any():
        return 0.0
    gaps = np.abs(binned.accuracy[filled] - binned.confidence[filled])
    return float(np.sum(binned.counts[filled] / binned.counts.sum() * gaps))


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Logits up to a per-row constant (all softmax needs): the clipped log of the probabilities."""
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(np.asarray(probabilities, dtype=np.float64)), _LOG_FLOOR)


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities after temperature scaling: softmax(log p / T)."""
    return special.softmax(log_probabilities(probabilities) / temperature, axis=1)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of the temperature-scaled scores."""
    log_scaled = special.log_softmax(log_probabilities(probabilities) / temperature, axis=1)
    return float(-np.mean(log_scaled[np.arange(len(labels)), labels]))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the validation NLL of softmax(log p / T) (1.0 for an empty split)."""
    if len(labels) == 0:
        return 1.0
    result = optimize.minimize_scalar(
        lambda log_t: negative_log_likelihood(probabilities, labels, float(np.exp(log_t))),
        bounds=tuple(np.log(TEMPERATURE_BOUNDS)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))
