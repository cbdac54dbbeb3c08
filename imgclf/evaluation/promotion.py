"""Which model the registry serves: a policy on validation images, never recency and never the test split.

The evaluate stage registers both models of a run, then picks this run's *candidate*: the one with the higher
validation accuracy. The candidate takes the `champion` alias only when no model holds it yet, or when it beats
the current champion on the same validation images by McNemar's paired test at `evaluate.promotion_level`.
Otherwise it becomes the `challenger` (a model worth a look, not served by default). "The same validation images"
means the same prepared data (`tracking.prepared_digest`: same images, classes, split): a champion trained on
other data, or with other classes, is never replaced automatically, since no paired test can compare them.

A queued experiment (`dvc exp run --queue`) runs in a temporary copy whose results reach the workspace only when
the user applies it; a champion it set would disagree with the workspace's `results/evaluate/runs.json`. So it
never takes `champion`: apply it (`dvc exp apply NAME`) and run `dvc repro --force evaluate`, which decides anew.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from imgclf.evaluation import paired_tests

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the candidate became (`champion` or `challenger`) and why, with the paired test's figures when one ran."""

    alias: str
    reason: str
    p_value: float | None = None
    candidate_only_right: int | None = None  # validation images only the candidate classifies right
    champion_only_right: int | None = None  # ... only the current champion classifies right

    def tags(self) -> dict[str, str]:
        """The model version's tags that record the decision."""
        tags = {"promotion.decision": self.alias, "promotion.reason": self.reason[:4000]}
        if self.p_value is not None:
            tags |= {"promotion.mcnemar_p_value": f"{self.p_value:.6g}",
                     "promotion.candidate_only_right": str(self.candidate_only_right),
                     "promotion.champion_only_right": str(self.champion_only_right)}
        return tags


def candidate_of(validation_accuracy: dict[str, float | None], parameter_counts: dict[str, int]) -> str | None:
    """The model with the higher validation accuracy; on a tie the one with fewer parameters (cheaper to serve),
    then the first by name. None when there are no validation images to choose on."""
    scored = {name: accuracy for name, accuracy in validation_accuracy.items() if accuracy is not None}
    if not scored:
        return None
    return min(scored, key=lambda name: (-scored[name], parameter_counts.get(name, 0), name))


def decide(*, candidate_right: np.ndarray, champion_right: np.ndarray | None, champion: str | None,
           same_data: bool, level: float, queued: bool) -> Decision:
    """The policy. `candidate_right` / `champion_right`: per validation image, whether each classifies it right
    (the same images, in the same order); `champion` names the current champion's version (None: there is none);
    `same_data`: whether both were evaluated on the same prepared data."""
    if queued:
        return Decision(CHALLENGER, "a queued experiment never takes the champion alias (the workspace's results "
                        "would disagree with the registry): `dvc exp apply` it, then `dvc repro --force evaluate`")
    if champion is None:
        return Decision(CHAMPION, "no model held the champion alias")
    if not same_data:
        return Decision(CHALLENGER, f"the champion {champion} was evaluated on other prepared data (other images, "
                        "classes or split): no paired test can compare them, so it is not replaced automatically")
    if champion_right is None or len(champion_right) != len(candidate_right):
        return Decision(CHALLENGER, f"the champion {champion}'s validation predictions are not recorded for these "
                        "images: not replaced automatically")
    candidate_right, champion_right = np.asarray(candidate_right, bool), np.asarray(champion_right, bool)
    only_candidate = int(np.sum(candidate_right & ~champion_right))
    only_champion = int(np.sum(~candidate_right & champion_right))
    test = paired_tests.mcnemar(only_scratch_right=only_candidate, only_transfer_right=only_champion)
    figures = dict(p_value=test.p_value, candidate_only_right=only_candidate, champion_only_right=only_champion)
    detail = (f"on {len(candidate_right)} validation images it alone is right on {only_candidate}, the champion "
              f"{champion} alone on {only_champion} (McNemar p = {test.p_value:.3g}, level {level:g})")
    if only_candidate > only_champion and test.p_value < level:
        return Decision(CHAMPION, f"beats the champion: {detail}", **figures)
    return Decision(CHALLENGER, f"not significantly better than the champion: {detail}", **figures)
