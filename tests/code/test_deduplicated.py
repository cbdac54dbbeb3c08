"""The comparison without the test images that have a training twin: what changes, said in one sentence."""

from __future__ import annotations

import numpy as np
import pandas as pd

from imgclf.evaluation import deduplicated, paired_tests


def _summary(scratch_right, transfer_right, twinned):
    table = pd.DataFrame({"id": np.arange(len(scratch_right)), "right_scratch": scratch_right,
                          "right_transfer": transfer_right, "true_class": "cat"})
    full = paired_tests.significance(table["right_scratch"].to_numpy(), table["right_transfer"].to_numpy(),
                                     resamples=200, confidence_level=0.95, seed=0)
    twins = deduplicated.Duplicates(
        pairs=pd.DataFrame({"test_id": twinned, "test_file": "t", "train_id": 0, "train_file": "r",
                            "similarity": 0.99, "exact": 0}),
        counts={"within_train": 4, "within_test": 1})
    return {**full, **deduplicated.summarise(table, twins, full=full, resamples=200, confidence_level=0.95, seed=0)}


def test_a_lead_built_on_memorised_copies_is_shown_to_change():
    # transfer is right on 60 twinned images the scratch model misses, and on nothing else that scratch misses
    scratch = np.array([False] * 60 + [True] * 30 + [False] * 10 + [True] * 100)
    transfer = np.array([True] * 60 + [False] * 30 + [False] * 10 + [True] * 100)
    summary = _summary(scratch, transfer, twinned=np.arange(60))
    assert summary["train_test_duplicates"] == 60 and summary["deduplicated"]["test_images"] == 140
    assert summary["accuracy_deduplicated"] == {"scratch": 130 / 140, "transfer": 100 / 140}
    assert summary["deduplicated"]["winner_changes"]
    line = deduplicated.sentence(summary)
    assert line.startswith("60 of 200 test images (30.0%) have a copy in training") and "leader changes to scratch" \
        in line


def test_unchanged_conclusions_and_no_twins_are_each_one_plain_sentence():
    right = np.array([True] * 150 + [False] * 50)
    summary = _summary(right, right, twinned=np.arange(3))
    assert not summary["deduplicated"]["winner_changes"] and not summary["deduplicated"]["significance_changes"]
    assert "neither the winner nor the significance changes" in deduplicated.sentence(summary)
    none = _summary(right, right, twinned=np.array([], dtype=int))
    assert none["train_test_duplicates"] == 0
    assert deduplicated.sentence(none).startswith("No test image has a copy in training (4 training images")
