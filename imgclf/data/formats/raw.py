"""What every raw format shares: the example it yields, source.json's common keys, the split names."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import DataSourceError

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing pixel arrays field by field is ambiguous
class RawExample:
    """One example of a raw source: array pixels (CIFAR, MNIST) or an image file decoded later."""

    split: str  # "train", or "test" for the source's official test split
    label: int  # index into class_names
    original: str  # where it came from, relative to raw_dir: "images/train/cat/1.jpg", "x.bin#12"
    pixels: np.ndarray | None = None  # uint8 HxWxC, read-only
    path: Path | None = None  # absolute path of an image file


def source_info(*, format_name: str, class_names: list[str], channels: int, sha256: str | None, origin: str,
                has_test_split: bool, num_examples: dict[str, int], **internal: Any) -> dict:
    """source.json's common keys in a fixed order, then the reader's own."""
    return {"format": format_name, "class_names": list(class_names), "channels": channels, "sha256": sha256,
            "origin": origin, "has_test_split": has_test_split, "num_examples": num_examples, **internal}


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Refuse a label beyond the class list: the label and image files do not belong together."""
    if labels.size and int(labels.max()) >= num_classes:
        raise DataSourceError(f"{where} has label {int(labels.max())} but the source has {num_classes} "
                              "classes: the files are corrupt or mismatched; fetch them again")

