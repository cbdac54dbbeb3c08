"""Progress of long steps: a bar with a rate and an estimate in a terminal, one line per step in logs and CI."""

from __future__ import annotations

import logging
import re
import time

import keras
import numpy as np

from imgclf import progress
from imgclf.evaluation import evaluate


def batches(count: int, size: int):
    for start in range(0, count, size):
        ids = np.arange(start, min(count, start + size))
        yield np.ones((len(ids), 4), np.float32), keras.utils.to_categorical(ids % 3, 3), ids


def test_terminal_shows_a_bar_with_rate_and_estimate(monkeypatch, capsys):
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    with progress.step("features train", total=30) as counter:
        for _ in range(3):
            time.sleep(0.6)  # past tqdm's refresh interval, so the bar redraws with a rate
            counter.update(10)
    drawn = capsys.readouterr().err
    assert "features train" in drawn
    assert re.search(r"\d+/30 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ images/s\]", drawn), drawn  # elapsed<remaining, rate


def test_logs_get_one_line_per_step_and_no_bar(monkeypatch, capsys, caplog):
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        predictions = evaluate.predict(model, batches(50, 16), description="evaluate scratch (test)", total=50)
    assert len(predictions.ids) == 50
    assert "\r" not in capsys.readouterr().err, "no bar redraws in a log"
    lines = [record.getMessage() for record in caplog.records if record.name == progress.__name__]
    assert len(lines) == 1 and re.fullmatch(r"evaluate scratch \(test\): 50 images in [\d.]+ s \([\d.]+ images/s\)",
                                            lines[0]), lines


def test_keras_fit_gets_its_bar_only_in_a_terminal(monkeypatch):
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    assert progress.keras_verbose() == 1
    monkeypatch.setenv(progress.MODE_ENV, "lines")
    assert progress.keras_verbose() == 2
