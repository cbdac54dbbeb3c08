"""Progress of the long steps (feature extraction, evaluation, training epochs): a bar with a rate and an estimate
in a terminal, and one line per step in logs and CI, where a bar would be hundreds of carriage-return updates.

IMGCLF_PROGRESS=bar or =lines overrides the terminal check (a bar under `script`, lines in a terminal).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

MODE_ENV = "IMGCLF_PROGRESS"
log = logging.getLogger(__name__)


def interactive() -> bool:
    """Bars only where a person watches: stderr is a terminal (DVC passes the terminal through to the stages)."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("bar", "lines"):
        return mode == "bar"
    return sys.stderr.isatty()


def keras_verbose() -> int:
    """`model.fit(verbose=...)`: Keras' per-step bar with its estimate in a terminal, one line per epoch otherwise."""
    return 1 if interactive() else 2


class Counter:
    """What a step reports as it goes: `update(n)` after each n items."""

    def __init__(self, bar: tqdm) -> None:
        self.bar, self.count = bar, 0

    def update(self, items: int) -> None:
        self.count += items
        self.bar.update(items)


@contextlib.contextmanager
def step(description: str, *, total: int | None = None, unit: str = "images",
         summary: bool = True) -> Iterator[Counter]:
    """Track one step: a tqdm bar (rate, estimate) in a terminal; with `summary` (in a terminal and in logs alike)
    one closing log line with the count, the time and the rate (off where the caller logs its own)."""
    bar = tqdm(total=total, desc=description, unit=f" {unit}", file=sys.stderr, disable=not interactive(),
               dynamic_ncols=True, mininterval=0.5, leave=False)
    counter = Counter(bar)
    started = time.perf_counter()
    try:
        yield counter
    finally:
        bar.close()
    if summary:
        seconds = time.perf_counter() - started
        rate = counter.count / seconds if seconds > 0 else 0.0
        log.info("%s: %d %s in %.1f s (%.1f %s/s)", description, counter.count, unit, seconds, rate, unit)
