"""Is one model really better than the other on these test images? Paired statistics with scipy.

Both models saw the same images, so the comparison is paired: the 2x2 table of right/wrong outcomes,
McNemar's test on the images where exactly one model is right (the exact binomial test for small counts,
chi-square with continuity correction otherwise), and a paired bootstrap interval for the accuracy
difference (transfer minus scratch).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

# Below this many discordant images (only one model right), McNemar's chi-square approximation is poor:
# use the exact binomial test (the usual rule, as in statsmodels' guidance).
EXACT_BELOW = 25
SIGNIFICANCE_LEVEL = 0.05


@dataclasses.dataclass(frozen=True)
class McNemar:
    statistic: float
    p_value: float
    exact: bool  # True: exact binomial test; False: chi-square with continuity correction


def two_by_two(scratch_right: np.ndarray, transfer_right: np.ndarray) -> dict[str, int]:
    """Counts of both right, only scratch right, only transfer right, both wrong."""
    scratch_right, transfer_right = np.asarray(scratch_right, bool), np.asarray(transfer_right, bool)
    return {
        "both_right": int(np.sum(scratch_right & transfer_right)),
        "only_scratch_right": int(np.sum(scratch_right & ~transfer_right)),
        "only_transfer_right": int(np.sum(~scratch_right & transfer_right)),
        "both_wrong": int(np.sum(~scratch_right & ~transfer_right)),
    }


def mcnemar(*, only_scratch_right: int, only_transfer_right: int) -> McNemar:
    """McNemar's test of equal accuracy from the two discordant counts."""
    discordant = only_scratch_right + only_transfer_right
    if discordant == 0:
        return McNemar(statistic=0.0, p_value=1.0, exact=True)
    if discordant < EXACT_BELOW:
        result = stats.binomtest(min(only_scratch_right, only_transfer_right), discordant, 0.5)
        return McNemar(statistic=float(min(only_scratch_right, only_transfer_right)),
                       p_value=float(result.pvalue), exact=True)
    statistic = (abs(only_scratch_right - only_transfer_right) - 1) ** 2 / discordant
    return McNemar(statistic=float(statistic), p_value=float(stats.chi2.sf(statistic, df=1)),
                   exact=False)


def accuracy_difference_interval(scratch_right: np.ndarray, transfer_right: np.ndarray, *, resamples: int,
                                 confidence_level: float, seed: int) -> tuple[float, float]:
    """Paired percentile bootstrap interval of accuracy(transfer) - accuracy(scratch)."""
    scratch_right = np.asarray(scratch_right, dtype=float)
    transfer_right = np.asarray(transfer_right, dtype=float)
    if len(scratch_right) < 2 or np.array_equal(scratch_right, transfer_right):
        difference = float(transfer_right.mean() - scratch_right.mean()) if len(scratch_right) else 0.0
        return difference, difference

    def difference(scratch: np.ndarray, transfer: np.ndarray, axis: int = -1) -> np.ndarray:
        return transfer.mean(axis=axis) - scratch.mean(axis=axis)

    result = stats.bootstrap((scratch_right, transfer_right), difference, paired=True, vectorized=True,
                             n_resamples=resamples, confidence_level=confidence_level, method="percentile",
                             batch=max(1, 2_000_000 // len(scratch_right)), rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def significance(scratch_right: np.ndarray, transfer_right: np.ndarray, *, resamples: int, confidence_level: float,
            seed: int) -> dict:
    """The comparison summary (numbers and booleans only, for DVC metrics): 2x2 counts, accuracies, the
    difference with its interval, McNemar's p-value."""
    counts = two_by_two(scratch_right, transfer_right)
    test = mcnemar(only_scratch_right=counts["only_scratch_right"],
                   only_transfer_right=counts["only_transfer_right"])
    low, high = accuracy_difference_interval(scratch_right, transfer_right, resamples=resamples,
                                             confidence_level=confidence_level, seed=seed)
    total = len(scratch_right)
    scratch_accuracy = float(np.mean(scratch_right)) if total else 0.0
    transfer_accuracy = float(np.mean(transfer_right)) if total else 0.0
    return {
        "test_images": total, **counts,
        "scratch_accuracy": scratch_accuracy,
        "transfer_accuracy": transfer_accuracy,
        "accuracy_difference": transfer_accuracy - scratch_accuracy,
        "accuracy_difference_ci": {"low": low, "high": high, "level": confidence_level},
        "mcnemar": {"statistic": test.statistic, "p_value": test.p_value, "exact": test.exact},
    }


def verdict(summary: dict, *, degenerate: dict[str, list[str]] | None = None) -> str:
    """One sentence: which model wins, by how much, and whether the difference is significant; or, when a
    model is degenerate (`degenerate`: model -> reasons from the evaluate stage), that there is no winner."""
    broken = {model: reasons for model, reasons in (degenerate or {}).items() if reasons}
    if broken:
        described = "; ".join(f"the {model} model {' and '.join(reasons)}" for model, reasons in broken.items())
        return (f"No winner: the comparison is not meaningful, because {described}. Fix that model first (see the "
                "evaluate stage's warning for likely causes); until then its accuracy says nothing about "
                "scratch versus transfer.")
    difference = summary["accuracy_difference"]
    interval = summary["accuracy_difference_ci"]
    p_value = summary["mcnemar"]["p_value"]
    level = round(100 * interval["level"])
    leader, other = ("transfer", "scratch") if difference > 0 else ("scratch", "transfer")
    method = "exact" if summary["mcnemar"]["exact"] else "chi-square"
    p_text = f"{method}, " + ("p < 0.001" if p_value < 0.001 else f"p = {p_value:.3g}")
    span = f"{level}% CI of transfer - scratch: {100 * interval['low']:+.1f} to {100 * interval['high']:+.1f} points"
    if difference == 0:
        return f"The models tie at {100 * summary['scratch_accuracy']:.1f}% accuracy ({span}; McNemar {p_text})."
    accuracies = f"{100 * summary[f'{leader}_accuracy']:.1f}% vs {100 * summary[f'{other}_accuracy']:.1f}%"
    gap = f"{100 * abs(difference):.1f} points"
    if p_value < SIGNIFICANCE_LEVEL:
        return (f"The {leader} model is better: {accuracies} accuracy, {gap} ahead; the difference is "
                f"significant (McNemar {p_text}; {span}).")
    return (f"The {leader} model scores higher ({accuracies}, {gap}) but the difference is not significant "
            f"at {SIGNIFICANCE_LEVEL} (McNemar {p_text}; {span}): more test images would tell.")
