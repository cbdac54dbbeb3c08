"""Every artifact's file and directory name, and the typed metadata of the prepared data.

The lowest layer: it imports nothing from imgclf, so every module (and dvc.yaml's reader, the deps test) may
use it. No other module spells a file name that one stage writes and another reads.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

PARAMS_FILE = "params.yaml"
LEGACY_INPUT_LINK = "data/input"  # was a link to data.path's data (fingerprint_data removes it): never recreate
CHAMPION = "champion"  # the registry alias of the better model (the evaluate stage moves it)
CHALLENGER = "challenger"  # the registry alias of a candidate not (yet) promoted
DVC_FILE = "dvc.yaml"

# download stage (data/raw)
SOURCE_FILE = "source.json"  # what was fetched, with its checksum

# preprocess stage (data/prepared)
PREPARED_DIR = "data/prepared"  # dvc.yaml's default; commands that take a prepared directory default to it
META_FILE = "meta.json"  # PreparedMeta below
MANIFEST_FILE = "manifest.csv"  # one row per kept image: id, split, label, original file
SKIPPED_FILE = "skipped.csv"  # images that could not be read, and why
CLASS_DISTRIBUTION_PLOT = "class_distribution.png"
AUGMENTATION_PREVIEW_PLOT = "augmentation_preview.png"

# extract_features stage (data/features)
FEATURES_DIR = "data/features"  # dvc.yaml's default; lr-find's default for the transfer model
EXTRACTOR_FILE = "extractor.keras"
FEATURES_META = "features.json"
AUGMENTED_VIEW_PREFIX = "train_aug"  # train_aug1, train_aug2, ...: extra augmented views of the training split


def features_file(view: str) -> str:
    """`<view>.npz` (features and labels): a split (train, val, test) or an augmented view (train_aug1)."""
    return f"{view}.npz"

# find_duplicates stage (data/duplicates): three outputs, so the trainers depend on the exclusions alone
DUPLICATES_DIR = "data/duplicates"
DUPLICATE_PAIRS_FILE = "pairs.csv"  # every (test, training) twin pair: ids, files as manifest.csv names them
DUPLICATES_SUMMARY_FILE = "duplicates.json"  # the counts
EXCLUDE_FILE = "exclude.json"  # training ids the trainers leave out (empty under duplicates.policy: report)

# training stages (models/<name>)
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"  # one row per epoch; drawn by dvc.yaml's plots
SUMMARY_FILE = "train_summary.json"
RUN_FILE = "run.json"  # the MLflow run that trained the model
RESUME_DIR = "resume"  # backups of a killed run, removed once the stage succeeds
RESUME_FINGERPRINT_FILE = "fingerprint.json"  # in RESUME_DIR: the settings the backups were made with
PHASE_DONE_FILE = "done.json"  # in RESUME_DIR/<phase>: that training phase finished

# evaluate stage (results/evaluate)
EVALUATE_DIR = "results/evaluate"  # dvc.yaml's out; its metrics file is dvc.yaml's `metrics:`
PREDICTION_FORMATS = ("table", "json", "csv")  # `imgclf predict --format`, `mlflow run -e predict -P format=`
MODEL_NAMES = ("scratch", "transfer")  # models/<name>, and the prefix of each per-model result file
METRICS_FILE = "metrics.json"
DETAILS_FILE = "details.json"
RUNS_FILE = "runs.json"
RELIABILITY_FILE = "reliability.png"
DEGENERATE_FILE = "degenerate.json"  # why a model was flagged degenerate (evaluate.degenerate_reasons)



def predictions_file(model: str) -> str:
    return f"{model}_predictions.csv"


def probabilities_file(model: str) -> str:
    return f"{model}_probabilities.npz"


def validation_predictions_file(model: str) -> str:
    """Validation ids, labels and predicted classes: also logged to the model's run, where promotion reads them."""
    return f"{model}_validation_predictions.npz"


def confusion_file(model: str) -> str:
    return f"{model}_confusion.csv"  # DVC's confusion plot data


def confusion_plot(model: str) -> str:
    return f"{model}_confusion.png"


def per_class_file(model: str) -> str:
    return f"{model}_per_class.csv"


# analyze stage (results/analysis)
ANALYSIS_DIR = "results/analysis"
ANALYSIS_SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
MARKDOWN_FILE = "summary.md"
PER_IMAGE_FILE = "per_image.csv"  # one row per test image, both models; its `id` column is the manifest's
MOST_CONFUSED_FILE = "most_confused.csv"
LABEL_ERRORS_FILE = "label_errors.csv"
TRAINING_CURVES_PLOT = "training_curves.png"
SCORE_BARS_PLOT = "score_bars.png"
DUPLICATES_FILE = "duplicates.csv"  # each test image's training twins, with both models' right/wrong on it
DUPLICATES_PLOT = "duplicates.png"  # the gallery of pairs


def most_confused_plot(model: str) -> str:
    return f"{model}_most_confused.png"


# `python -m imgclf lr-find`
LR_FIND_DIR = "results/lr_find"


def lr_find_file(model: str, suffix: str) -> str:
    """`lr_find_<model>.csv` (the sweep) or `.png` (its plot)."""
    return f"lr_find_{model}{suffix}"


# an MLflow-logged model and an exported SavedModel (assets.extra/): the preprocessing facts of meta.json
PREPROCESSING_FILE = "preprocessing.json"

# MLflow's local store, beside dvc.yaml
MLFLOW_STORE_FILE = "mlflow.db"
MLFLOW_ARTIFACT_DIR = "mlartifacts"


class MetadataError(ValueError):
    """A `meta.json` this version cannot read; the CLI shows it as one line (imgclf.stage_runner)."""


@dataclasses.dataclass(frozen=True)
class PreparedMeta:
    """What the preprocess stage says about its output (`meta.json`); every later stage reads it."""

    source: str
    source_sha256: str | None
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    resize: str
    counts: dict[str, int]  # images per split: train, val, test
    counts_per_class: dict[str, list[int]]  # per split, images of each class in class_names order
    skipped: int  # images that could not be read
    shards: dict[str, list[str]]  # per split, its TFRecord shard files

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    def to_dict(self) -> dict:
        """The `meta.json` form (what the preprocess stage writes, and serving logs beside a model)."""
        return {**dataclasses.asdict(self), "class_names": list(self.class_names), "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = META_FILE) -> PreparedMeta:
        rerun = "rerun the preprocess stage (dvc repro preprocess)"
        if not isinstance(raw, dict):
            raise MetadataError(f"{source} is not a JSON object of the preprocess stage's facts; {rerun}")
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in raw]
        if missing:
            raise MetadataError(f"{source} lacks {', '.join(missing)}: it was written by another version of the "
                             f"preprocess stage; {rerun}")
        values = {name: raw[name] for name in names}
        problem = preprocessing_problem(values) or _bookkeeping_problem(values)
        if problem:
            raise MetadataError(f"{source}: {problem}; {rerun}")
        return cls(**{**values, "class_names": tuple(values["class_names"])})


RESIZE_POLICIES = ("pad", "crop", "stretch")


def preprocessing_problem(raw: dict[str, Any]) -> str | None:
    """What is wrong with the preprocessing facts (class_names, image_size, channels, resize) of a meta.json or
    preprocessing.json, or None. `class_names: "abcd"` would otherwise be read as four classes."""
    names = raw.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        return f"class_names must be a list of class names (strings), got {_short(names)}"
    if len(set(names)) != len(names):
        return f"class_names lists a class twice: {_short(names)}"
    size = raw.get("image_size")
    if not _is_int(size) or size < 1:
        return f"image_size must be a positive integer, got {_short(size)}"
    if raw.get("channels") not in (1, 3) or isinstance(raw.get("channels"), bool):
        return f"channels must be 1 or 3, got {_short(raw.get('channels'))}"
    if raw.get("resize") not in RESIZE_POLICIES:
        return f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {_short(raw.get('resize'))}"
    return None


def _bookkeeping_problem(raw: dict[str, Any]) -> str | None:
    """What is wrong with the rest of meta.json (counts, shards, source), or None."""
    checks = (("source", isinstance(raw["source"], str), "a string"),
              ("source_sha256", raw["source_sha256"] is None or isinstance(raw["source_sha256"], str),
               "a string or null"),
              ("counts", _is_mapping_of(raw["counts"], _is_int), "a mapping of split to image count"),
              ("counts_per_class", _is_mapping_of(raw["counts_per_class"], lambda value: _is_list_of(value, _is_int)),
               "a mapping of split to a list of counts"),
              ("skipped", _is_int(raw["skipped"]), "an integer"),
              ("shards", _is_mapping_of(raw["shards"], lambda value: _is_list_of(value, lambda item: isinstance(
                  item, str))), "a mapping of split to a list of shard file names"))
    for key, valid, expected in checks:
        if not valid:
            return f"{key} must be {expected}, got {_short(raw[key])}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list_of(value: Any, check: Callable[[Any], bool]) -> bool:
    return isinstance(value, list) and all(check(item) for item in value)


def _is_mapping_of(value: Any, check: Callable[[Any], bool]) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) and check(item) for key, item in value.items())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def read_prepared_meta(prepared_dir: Path) -> PreparedMeta:
    """The metadata of a prepared data directory, with a one-line error saying which stage to run."""
    path = Path(prepared_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the preprocess stage first (dvc repro preprocess)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError; `[[[...` 20,000 deep
        raise MetadataError(f"{path} is not valid JSON ({json_problem(error)}); rerun the preprocess stage "
                            "(dvc repro preprocess)") from None
    return PreparedMeta.from_dict(raw, source=str(path))


def json_problem(error: BaseException) -> str:
    """`Expecting value: line 1 column 1 (char 0)`: why a JSON file could not be parsed, on one line."""
    return error.args[0] if isinstance(error, json.JSONDecodeError) else type(error).__name__


def read_history(path: Path) -> list[dict[str, Any]]:
    """A training stage's per-epoch history.csv as rows (epoch an int, phase a string, the rest floats); [] when
    absent. The one reader: resume, evaluate, the MLflow re-logging and the report all read it here."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{key: (int(value) if key == "epoch" else value if key == "phase" else float(value))
             for key, value in row.items() if value != ""} for row in rows]
