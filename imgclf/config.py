"""The one params loader: params.yaml -> a typed, frozen, validated configuration.

Every knob of the pipeline is a field below, with a one-line comment in params.yaml. Loading is strict:
an unknown key, a wrong type or an out-of-range value raises `ConfigError` naming the file, the key and
what is allowed, so a typo stops a stage instead of silently becoming a new setting.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent

from imgclf.errors import ConfigError

log = logging.getLogger(__name__)

DataSource = Literal["cifar10", "cifar100", "mnist", "fashion_mnist", "image_folder", "synthetic"]
ResizePolicy = Literal["pad", "crop", "stretch"]
SmallClassPolicy = Literal["error", "drop"]
FlipMode = Literal["none", "horizontal", "vertical", "horizontal_and_vertical"]
Interpolation = Literal["bilinear", "nearest"]
Optimizer = Literal["adam", "adamw", "sgd"]
LrSchedule = Literal["constant", "step", "cosine", "one_cycle", "plateau", "linear"]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]
Distribute = Literal["none", "mirrored", "multi_worker"]
ScratchArchitecture = Literal["seed_cnn", "residual"]
Activation = Literal["gelu", "relu"]




def _field(default: Any, *, minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: bool = False) -> Any:
    """A dataclass field with an optional numeric range, checked at load time."""
    metadata = {"minimum": minimum, "maximum": maximum, "exclusive_minimum": exclusive_minimum}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: DataSource = "cifar10"
    path: str | None = None
    sha256: str | None = None
    val_fraction: float = _field(0.1, minimum=0.0, maximum=0.5, exclusive_minimum=True)
    test_fraction: float = _field(0.2, minimum=0.0, maximum=0.5, exclusive_minimum=True)
    max_per_class: int | None = _field(None, minimum=1)
    synthetic_classes: int = _field(4, minimum=2, maximum=100)
    synthetic_per_class: int = _field(60, minimum=4)
    synthetic_image_size: int = _field(32, minimum=8, maximum=512)
    max_extracted_mb: float = _field(20480.0, minimum=1.0)
    max_expansion_ratio: float = _field(100.0, minimum=1.0)
    max_archive_members: int = _field(200_000, minimum=1)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = _field(32, minimum=8, maximum=1024)
    resize: ResizePolicy = "pad"
    min_images_per_class: int = _field(10, minimum=1)
    small_class_policy: SmallClassPolicy = "error"
    examples_per_shard: int = _field(10000, minimum=100)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = False
    flip: FlipMode = "horizontal"
    translate: float = _field(0.1, minimum=0.0, maximum=0.5)
    interpolation: Interpolation = "bilinear"
    rotate: float = _field(0.0, minimum=0.0, maximum=0.5)
    zoom: float = _field(0.0, minimum=0.0, maximum=0.9)
    contrast: float = _field(0.0, minimum=0.0, maximum=0.9)
    preview_images: int = _field(16, minimum=1, maximum=64)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How a model is fitted: optimizer, schedule, regularisation, stopping. Shared by both models."""

    optimizer: Optimizer = "adam"
    learning_rate: float = _field(0.001, minimum=0.0, exclusive_minimum=True)
    weight_decay: float = _field(0.0, minimum=0.0)
    momentum: float = _field(0.9, minimum=0.0, maximum=1.0)
    nesterov: bool = False
    label_smoothing: float = _field(0.0, minimum=0.0, maximum=0.5)
    lr_schedule: LrSchedule = "constant"
    warmup_epochs: float = _field(0.0, minimum=0.0)
    lr_step_epochs: int = _field(10, minimum=1)
    lr_decay_factor: float = _field(0.1, minimum=0.0, maximum=1.0, exclusive_minimum=True)
    lr_plateau_patience: int = _field(3, minimum=1)
    early_stopping: bool = False
    early_stopping_patience: int = _field(5, minimum=1)
    early_stopping_min_delta: float = _field(0.0, minimum=0.0)
    restore_best_weights: bool = True
    checkpoint_best: bool = False
    epochs: int = _field(25, minimum=1)
    batch_size: int = _field(64, minimum=1)


@dataclasses.dataclass(frozen=True)
class ScratchConfig(FitConfig):
    architecture: ScratchArchitecture = "seed_cnn"
    residual_widths: list[int] = _field([64, 256, 256], minimum=1)
    residual_activation: Activation = "gelu"
    residual_head_scale: float = _field(1 / 9, minimum=0.0, exclusive_minimum=True)
    residual_bias_lr_scale: float = _field(64.0, minimum=1.0)
    lookahead: bool = False
    conv_filters: list[int] = _field([32, 64, 64, 128])
    pool_after: list[int] = _field([2, 3])
    dense_units: list[int] = _field([256, 128])
    dropout: float = _field(0.2, minimum=0.0, maximum=0.9)
    batch_norm: bool = True
    max_norm: float | None = _field(3.0, minimum=0.0, exclusive_minimum=True)
    batch_norm_images: int = _field(4096, minimum=0)


@dataclasses.dataclass(frozen=True)
class TransferConfig(FitConfig):
    backbone: str = "resnet50"
    weights: str | None = "imagenet"
    input_size: int = _field(96, minimum=32, maximum=512)
    feature_batch_size: int = _field(64, minimum=1)
    augment_copies: int = _field(0, minimum=0, maximum=20)
    head_dropout: float = _field(0.2, minimum=0.0, maximum=0.9)
    head_units: int = _field(0, minimum=0)
    epochs: int = _field(10, minimum=1)
    finetune_epochs: int = _field(0, minimum=0)
    finetune_layers: int = _field(0, minimum=0)
    finetune_learning_rate: float = _field(1e-5, minimum=0.0, exclusive_minimum=True)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Where and how training runs; the same for both models."""

    precision: Precision = "float32"
    jit_compile: bool = False
    distribute: Distribute = "none"
    tensorboard: bool = False
    resume: bool = True


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = _field(256, minimum=1)
    calibration_bins: int = _field(15, minimum=2, maximum=100)
    top_k: int = _field(5, minimum=1, maximum=20)
    tta_flip: bool = False
    promotion_level: float = _field(0.05, minimum=0.0, maximum=1.0, exclusive_minimum=True)


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    gallery_size: int = _field(25, minimum=1, maximum=400)
    confused_pairs: int = _field(6, minimum=1, maximum=50)
    confused_examples: int = _field(4, minimum=1, maximum=20)
    label_error_confidence: float = _field(0.8, minimum=0.0, maximum=1.0)
    score_bar_ids: list[int] = _field([], minimum=0)
    score_bar_images: int = _field(6, minimum=0, maximum=50)
    score_bar_classes: int = _field(10, minimum=2, maximum=100)
    bootstrap_resamples: int = _field(2000, minimum=100)
    confidence_level: float = _field(0.95, minimum=0.5, maximum=1.0, exclusive_minimum=True)
    thumbnail_size: int = _field(96, minimum=16, maximum=512)


@dataclasses.dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "imgclf"


@dataclasses.dataclass(frozen=True)
class Params:
    seed: int = _field(42, minimum=0, maximum=2**32 - 1)  # NumPy's and TensorFlow's seed range
    deterministic: bool = False
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    preprocess: PreprocessConfig = dataclasses.field(default_factory=PreprocessConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    scratch: ScratchConfig = dataclasses.field(default_factory=ScratchConfig)
    transfer: TransferConfig = dataclasses.field(default_factory=TransferConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    analysis: AnalysisConfig = dataclasses.field(default_factory=AnalysisConfig)
    mlflow: MlflowConfig = dataclasses.field(default_factory=MlflowConfig)

    def __post_init__(self) -> None:
        _check_cross_field(self)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise `ConfigError` saying exactly what to fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root or pass --params")
    raw = read_params_yaml(path)
    log.debug("params from %s (sections set there: %s; defaults for the rest)", path.resolve(),
              ", ".join(raw) if isinstance(raw, dict) and raw else "none")
    return params_from_dict(raw, source=str(path))


# A params file is a few KB of settings (params.yaml: about 10 KB) nested two or three levels deep. Anything much
# bigger or deeper is refused before it is parsed: YAML's aliases let 2.7 KB expand to gigabytes (an "alias bomb":
# 21 s and 704 MB for DVC to walk), and 100 KB of nested brackets take ruamel's scanner minutes.
#
# What this protects, and what it cannot: DVC parses params.yaml itself (dvc/utils/serialize/_yaml.py, ruamel's safe
# loader as here) and before any stage runs: `dvc repro` and `dvc exp run` read it to decide which stages are stale,
# flattening every value (`params.yaml:` tracks the whole file) with the aliases expanded, so the check_params stage
# comes too late. Our entry points check the file before they start DVC: imgclf.dvc_cli (the MLproject entry points,
# `make run`) and ci/retrain.sh, which runs on pull requests, so a bomb committed there stops in well under a second
# with one line. A bare `dvc repro` or `dvc params diff` typed by hand still parses the file unchecked: nothing of
# ours runs before it.
MAX_PARAMS_BYTES = 256 << 10
MAX_PARAMS_DEPTH = 16


def check_params_file(path: str | Path) -> str:
    """The text of a params file, refused (`ConfigError`, naming the file and line) when it is larger than
    MAX_PARAMS_BYTES, uses YAML anchors or aliases, or nests deeper than MAX_PARAMS_DEPTH. Only the parser's events
    are read, never a value built, so nothing expands."""
    path = Path(path)
    with open(path, "rb") as handle:
        data = handle.read(MAX_PARAMS_BYTES + 1)
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: more than {MAX_PARAMS_BYTES >> 10} KB, far more than a params file needs; check "
                          "that it is the right file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:  # DVC reads it as UTF-8 too
        found = ("it looks like UTF-16" if data.startswith((b"\xff\xfe", b"\xfe\xff"))
                 else f"byte 0x{data[error.start]:02x} at offset {error.start}")
        raise ConfigError(f"{path}: not UTF-8 text ({found}); save it as UTF-8") from None
    if _flow_depth(text) > MAX_PARAMS_DEPTH:  # ruamel's scanner takes time quadratic in it, even for events
        raise ConfigError(f"{path}: nested too deeply for a params file (more than {MAX_PARAMS_DEPTH} levels); fix "
                          "the file")
    depth = 0
    try:
        for event in YAML(typ="safe").parse(text):
            line = event.start_mark.line + 1
            if isinstance(event, AliasEvent) or getattr(event, "anchor", None):
                raise ConfigError(f"{path}:{line}: YAML anchors and aliases (&name, *name) are not allowed in a params "
                                  "file (an alias can expand exponentially); write the values out")
            depth += isinstance(event, CollectionStartEvent) - isinstance(event, CollectionEndEvent)
            if depth > MAX_PARAMS_DEPTH:
                raise ConfigError(f"{path}:{line}: nested more than {MAX_PARAMS_DEPTH} levels deep; a params file "
                                  "holds sections of keys")
    except YAMLError as error:
        raise _not_valid_yaml(path, error) from error
    return text


def read_params_yaml(path: str | Path) -> Any:
    """A params file parsed exactly as DVC parses it (ruamel.yaml, YAML 1.2), so that the values a stage
    validates are the values DVC tracks: `3e-4` is a float and `yes` is a string, where PyYAML (YAML 1.1)
    reads a string and a boolean. `check_params_file` vets it first; keys that are not strings and nesting deeper
    than `MAX_NESTING` (params.yaml has 2) are refused after it, each as one `ConfigError` line."""
    path = Path(path)
    text = check_params_file(path)
    try:
        raw = YAML(typ="safe").load(text)
    except YAMLError as error:
        raise _not_valid_yaml(path, error) from error
    except RecursionError:  # its parser recurses once per level of block nesting
        raise ConfigError(f"{path}: nested too deeply for a params file (at most {MAX_NESTING} levels); fix the "
                          "file") from None
    check_plain_mapping(raw, source=str(path))
    return raw if raw is not None else {}


def _not_valid_yaml(path: Path, error: YAMLError) -> ConfigError:
    message = " ".join(str(error).split())  # one line: ruamel spreads its message and position over several
    return ConfigError(f"{path}: not valid YAML: {message}")


# Levels of nested mappings and lists a params file or profile may have: params.yaml has 2 (`scratch.conv_filters`).
MAX_NESTING = 8


def _flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow collections (`[`, `{`) in `text`, brackets in quoted strings and comments
    aside: a cheap bound checked before parsing (a misjudged odd string only errs towards parsing it)."""
    depth = deepest = 0
    quote, previous, escaped, in_comment = "", "\n", False, False
    for char in text:
        if in_comment:
            in_comment = char != "\n"
        elif quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"" and previous in " \t\n[{,:":
            quote = char
        elif char == "#" and previous in " \t\n":
            in_comment = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
        previous = char
    return deepest


def check_plain_mapping(raw: Any, *, source: str) -> None:
    """Refuse keys that are not strings (`1: 2`, `null: x`) and nesting past MAX_NESTING, without recursion: a
    20,000-level file would otherwise end every recursive reader (merge, flatten, validation) in RecursionError."""
    pending, seen = [(raw, "", 0)], set()
    while pending:
        value, where, depth = pending.pop()
        if not isinstance(value, (dict, list)) or id(value) in seen:  # a YAML alias repeats a node: checked once
            continue
        seen.add(id(value))
        children = list(value.items() if isinstance(value, dict) else enumerate(value))
        if children and depth >= MAX_NESTING:
            raise ConfigError(f"{source}: {where or 'top level'}: nested more than {MAX_NESTING} levels deep; a "
                              "params file has sections of keys, and lists of numbers")
        for key, child in children:
            if isinstance(value, dict) and not isinstance(key, str):
                raise ConfigError(f"{source}: {where or 'top level'}: key {key!r} is not a string; every params "
                                  "key is a name, e.g. `epochs: 10`")
            name = f"[{key}]" if isinstance(value, list) else f".{key}" if where else key
            pending.append((child, f"{where}{name}", depth + 1))


def params_from_dict(raw: Any, *, source: str = "params") -> Params:
    """Build `Params` from a plain mapping (parsed YAML), validating every key."""
    check_plain_mapping(raw, source=source)
    try:
        return _build(Params, raw, key="", source=source)
    except ConfigError:
        raise
    except ValueError as error:  # raised by __post_init__ cross-field checks
        raise ConfigError(f"{source}: {error}") from error


def params_to_dict(params: Params) -> dict[str, Any]:
    """The configuration as plain nested dicts (for logging and for writing a params file)."""
    return dataclasses.asdict(params)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: flat, readable keys for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _check_cross_field(params: Params) -> None:
    if params.data.source == "image_folder" and not params.data.path:
        raise ValueError("data.path: required when data.source is 'image_folder' "
                         "(a directory, a .tar.gz/.zip archive, or an http(s) URL)")
    if params.data.sha256 is not None:
        digest = params.data.sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("data.sha256: expected 64 hex characters (the output of `sha256sum`), "
                             f"got {params.data.sha256!r}")
    for section in ("scratch", "transfer"):
        fit = getattr(params, section)
        if fit.warmup_epochs > 0 and fit.lr_schedule in ("one_cycle", "plateau"):
            raise ValueError(f"{section}.warmup_epochs: not used with lr_schedule {fit.lr_schedule!r} (one_cycle warms "
                             "up by itself, plateau lowers a plain rate); set it to 0 or pick another schedule")
    if not params.mlflow.experiment.strip():
        # MLflow refuses an empty experiment name only when the run is logged: after training, minutes later.
        raise ValueError("mlflow.experiment: expected a non-empty experiment name, e.g. imgclf")
    if not params.scratch.residual_widths:
        raise ValueError("scratch.residual_widths: expected a non-empty list of positive integers")
    blocks = len(params.scratch.conv_filters)
    if not params.scratch.conv_filters or any(f < 1 for f in params.scratch.conv_filters):
        raise ValueError("scratch.conv_filters: expected a non-empty list of positive integers")
    if any(f < 1 for f in params.scratch.dense_units):
        raise ValueError("scratch.dense_units: expected a list of positive integers")
    bad_pools = [index for index in params.scratch.pool_after if not 1 <= index <= blocks]
    if bad_pools:
        raise ValueError(f"scratch.pool_after: block numbers must be between 1 and {blocks} "
                         f"(the length of scratch.conv_filters), got {bad_pools}")


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(annotation))
    if origin is list:
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "null"
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[annotation]


def _describe_range(metadata: typing.Mapping[str, Any]) -> str:
    parts = []
    if metadata.get("minimum") is not None:
        parts.append(f"{'>' if metadata['exclusive_minimum'] else '>='} {metadata['minimum']}")
    if metadata.get("maximum") is not None:
        parts.append(f"<= {metadata['maximum']}")
    return " and ".join(parts)


def _convert(annotation: Any, value: Any, *, key: str, source: str) -> Any:
    """Check `value` against `annotation`; return it converted (int -> float where a number is due)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key=key, source=source)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _convert(option, value, key=key, source=source)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(annotation):
            return value
    elif origin is list:
        if isinstance(value, list):
            (item_type,) = typing.get_args(annotation)
            return [_convert(item_type, item, key=f"{key}[{index}]", source=source)
                    for index, item in enumerate(value)]
    elif annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # .nan would pass every range check (NaN compares false) and .inf mean nothing
                raise ConfigError(f"{source}: {key}: expected a finite number, got {value!r}")
            return float(value)
    elif annotation is str and isinstance(value, str):
        return value
    raise ConfigError(f"{source}: {key}: expected {_describe(annotation)}, got {value!r}")


def _build(cls: type, raw: Any, *, key: str, source: str) -> Any:
    where = key or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping of keys, got {raw!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        name = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise ConfigError(f"{source}: unknown key {name!r}; allowed keys under {where}: "
                          f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        field_key = f"{key}.{name}" if key else name
        converted = _convert(hints[name], value, key=field_key, source=source)
        _check_range(fields[name].metadata, converted, key=field_key, source=source)
        values[name] = converted
    return cls(**values)


def _check_range(metadata: typing.Mapping[str, Any], value: Any, *, key: str, source: str) -> None:
    if not metadata or value is None or isinstance(value, (bool, str)):
        return
    for item in value if isinstance(value, list) else [value]:
        minimum, maximum = metadata.get("minimum"), metadata.get("maximum")
        too_low = minimum is not None and (item <= minimum if metadata["exclusive_minimum"]
                                           else item < minimum)
        too_high = maximum is not None and item > maximum
        if too_low or too_high:
            raise ConfigError(f"{source}: {key}: expected a value {_describe_range(metadata)}, "
                              f"got {item!r}")


class UndeclaredParamError(LookupError):
    """A stage read a params key it does not declare: a bug in the stage (dvc.yaml would miss the key)."""


class DeclaredParams:
    """`Params` as a stage sees it: only the keys it declares (its PARAMS, which dvc.yaml lists).

    Reading any other key raises `UndeclaredParamError`, so a stage cannot come to depend on a key DVC does not
    track for it (a stale result after that key changes). Every key read is recorded in `reads`, so a test can
    also find declared keys a stage never reads (needless reruns). Sections are views of the same kind."""

    def __init__(self, values: Any, *, stage: str, declared: frozenset[str], reads: set[str], prefix: str = ""):
        self._values, self._stage, self._declared, self._reads, self._prefix = values, stage, declared, reads, prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._values, name)  # AttributeError for a name params.yaml does not have
        key = f"{self._prefix}{name}"
        if dataclasses.is_dataclass(value):  # a section: its keys are checked one by one as they are read
            return DeclaredParams(value, stage=self._stage, declared=self._declared, reads=self._reads,
                                  prefix=f"{key}.")
        if key not in self._declared and key.partition(".")[0] not in self._declared:
            raise UndeclaredParamError(f"stage {self._stage} reads params key {key!r}, which it does not declare; "
                                       f"add it to PARAMS in stages/{self._stage}.py and to the stage's params "
                                       f"in dvc.yaml")
        self._reads.add(key)
        return value

    def __repr__(self) -> str:
        return f"DeclaredParams({self._stage}: {self._prefix or 'params'})"


def whole(params: Params | DeclaredParams) -> Params:
    """The full configuration behind a stage's view, for lineage only: logging whole sections with a run (MLflow
    params, a resume fingerprint), never for a value that shapes an output. A stage logs, for instance, the data
    and preprocess params whose effect reaches it through data/prepared, which is what DVC tracks for it."""
    return params._values if isinstance(params, DeclaredParams) else params
