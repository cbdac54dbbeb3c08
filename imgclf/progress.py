"""Progress of the long steps (download, extraction, preprocessing, feature extraction, training epochs, evaluation,
the report's figures): a bar with a rate and an estimate in a terminal, and one line per step in logs and CI, where
a bar would be hundreds of carriage-return updates.

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


BYTES = "B"  # the unit of a step counting bytes: shown as kB, MB, GB (powers of 1024) with a rate per second


def _amount(count: float, unit: str) -> str:
    """`12 images`, or `3.4 MB` for bytes."""
    if unit == BYTES:
        prefixes = ["", "k", "M", "G", "T"]
        while abs(count) >= 1024 and len(prefixes) > 1:
            count /= 1024
            prefixes.pop(0)
        return f"{count:.1f} {prefixes[0]}B" if prefixes[0] else f"{count:.0f} B"
    return f"{count:.0f} {unit}" if float(count).is_integer() else f"{count:.1f} {unit}"


@contextlib.contextmanager
def step(description: str, *, total: int | None = None, unit: str = "images",
         summary: bool = True) -> Iterator[Counter]:
    """Track one step: a tqdm bar (rate, estimate) in a terminal; with `summary` (in a terminal and in logs alike)
    one closing log line with the count, the time and the rate (off where the caller logs its own).

    `unit=progress.BYTES` counts bytes, shown scaled (kB, MB) where a count of them would be unreadable."""
    in_bytes = unit == BYTES
    bar = tqdm(total=total, desc=description, unit=unit if in_bytes else f" {unit}", unit_scale=in_bytes,
               unit_divisor=1024, file=sys.stderr, disable=not interactive(), dynamic_ncols=True, mininterval=0.5,
               leave=False)
    counter = Counter(bar)
    started = time.perf_counter()
    try:
        yield counter
    finally:
        bar.close()
    if summary:
        seconds = time.perf_counter() - started
        rate = counter.count / seconds if seconds > 0 else 0.0
        log.info("%s: %s in %.1f s (%s/s)", description, _amount(counter.count, unit), seconds, _amount(rate, unit))
