"""The one params loader: params.yaml -> a typed, frozen, validated configuration (pydantic models).

Every knob of the pipeline is a field below, with a one-line comment in params.yaml. Loading is strict:
an unknown key, a wrong type or an out-of-range value raises `ConfigError` naming the file, the key and
what is allowed, so a typo stops a stage instead of silently becoming a new setting.
"""

from __future__ import annotations

import logging
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent

from imgclf.errors import ConfigError

log = logging.getLogger(__name__)

DataSource = Literal["cifar10", "cifar100", "mnist", "fashion_mnist", "image_folder", "synthetic"]
ResizePolicy = Literal["pad", "crop", "stretch"]
SmallClassPolicy = Literal["error", "drop"]
# alternating: horizontal, each image mirrored in every other epoch (airbench's alternating flips: at random in the
# first epoch, the opposite of its last epoch's after that), done by the input pipeline (tfdata.make_dataset).
FlipMode = Literal["none", "horizontal", "vertical", "horizontal_and_vertical", "alternating"]
Interpolation = Literal["bilinear", "nearest"]
Optimizer = Literal["adam", "adamw", "sgd"]
LrSchedule = Literal["constant", "step", "cosine", "one_cycle", "plateau", "linear"]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]
Distribute = Literal["none", "mirrored", "multi_worker"]
ScratchArchitecture = Literal["seed_cnn", "residual"]
Activation = Literal["gelu", "relu"]
DuplicatePolicy = Literal["report", "exclude_from_training"]

# Every section is strict (no coercion: `"10"` is no integer, `1` and `"yes"` are no booleans, `true` is no number;
# an integer is accepted where a number is due), closed (an unknown key is refused) and frozen. Floats are finite.
_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _number(default: float | None, **bounds: float) -> Any:
    """A float field, finite (NaN would pass every range check, as NaN compares false, and inf means nothing)."""
    return Field(default, allow_inf_nan=False, **bounds)


def _list(default: list[int]) -> Any:
    return Field(default_factory=lambda: list(default))


NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]


class _Section(BaseModel):
    model_config = _MODEL_CONFIG


class DataConfig(_Section):
    source: DataSource = "cifar10"
    path: str | None = None
    sha256: str | None = None
    val_fraction: float = _number(0.1, gt=0.0, le=0.5)
    test_fraction: float = _number(0.2, gt=0.0, le=0.5)
    max_per_class: int | None = Field(None, ge=1)
    synthetic_classes: int = Field(4, ge=2, le=100)
    synthetic_per_class: int = Field(60, ge=4)
    synthetic_image_size: int = Field(32, ge=8, le=512)
    max_extracted_mb: float = _number(20480.0, ge=1.0)
    max_expansion_ratio: float = _number(100.0, ge=1.0)
    max_archive_members: int = Field(200_000, ge=1)


class PreprocessConfig(_Section):
    image_size: int = Field(32, ge=8, le=1024)
    resize: ResizePolicy = "pad"
    min_images_per_class: int = Field(10, ge=1)
    small_class_policy: SmallClassPolicy = "error"
    examples_per_shard: int = Field(10000, ge=100)


class AugmentConfig(_Section):
    enabled: bool = False
    flip: FlipMode = "horizontal"
    translate: float = _number(0.1, ge=0.0, le=0.5)
    interpolation: Interpolation = "bilinear"
    rotate: float = _number(0.0, ge=0.0, le=0.5)
    zoom: float = _number(0.0, ge=0.0, le=0.9)
    contrast: float = _number(0.0, ge=0.0, le=0.9)
    preview_images: int = Field(16, ge=1, le=64)


class FitConfig(_Section):
    """How a model is fitted: optimizer, schedule, regularisation, stopping. Shared by both models."""

    optimizer: Optimizer = "adam"
    learning_rate: float = _number(0.001, gt=0.0)
    weight_decay: float = _number(0.0, ge=0.0)
    momentum: float = _number(0.9, ge=0.0, le=1.0)
    nesterov: bool = False
    label_smoothing: float = _number(0.0, ge=0.0, le=0.5)
    lr_schedule: LrSchedule = "constant"
    warmup_epochs: float = _number(0.0, ge=0.0)
    lr_step_epochs: int = Field(10, ge=1)
    lr_decay_factor: float = _number(0.1, gt=0.0, le=1.0)
    lr_plateau_patience: int = Field(3, ge=1)
    early_stopping: bool = False
    early_stopping_patience: int = Field(5, ge=1)
    early_stopping_min_delta: float = _number(0.0, ge=0.0)
    restore_best_weights: bool = True
    checkpoint_best: bool = False
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(64, ge=1)


class ScratchConfig(FitConfig):
    architecture: ScratchArchitecture = "seed_cnn"
    residual_widths: list[PositiveInt] = _list([64, 256, 256])
    residual_activation: Activation = "gelu"
    residual_head_scale: float = _number(1 / 9, gt=0.0)
    residual_bias_lr_scale: float = _number(64.0, ge=1.0)
    lookahead: bool = False
    conv_filters: list[int] = _list([32, 64, 64, 128])
    pool_after: list[int] = _list([2, 3])
    dense_units: list[int] = _list([256, 128])
    dropout: float = _number(0.2, ge=0.0, le=0.9)
    batch_norm: bool = True
    max_norm: float | None = _number(3.0, gt=0.0)
    batch_norm_images: int = Field(4096, ge=0)


class TransferConfig(FitConfig):
    backbone: str = "resnet50"
    weights: str | None = "imagenet"
    input_size: int = Field(96, ge=32, le=512)
    feature_batch_size: int = Field(64, ge=1)
    augment_copies: int = Field(0, ge=0, le=20)
    head_dropout: float = _number(0.2, ge=0.0, le=0.9)
    head_units: int = Field(0, ge=0)
    epochs: int = Field(10, ge=1)
    finetune_epochs: int = Field(0, ge=0)
    finetune_layers: int = Field(0, ge=0)
    finetune_learning_rate: float = _number(1e-5, gt=0.0)


class TrainingConfig(_Section):
    """Where and how training runs; the same for both models."""

    precision: Precision = "float32"
    jit_compile: bool = False
    distribute: Distribute = "none"
    workers: int = Field(2, ge=1, le=1024)  # multi_worker: processes in all (imgclf/training/distributed.py)
    coordinator: str = "127.0.0.1:0"  # multi_worker: host:port of process 0; a loopback host runs every worker here
    tensorboard: bool = False
    resume: bool = True


class EvaluateConfig(_Section):
    batch_size: int = Field(256, ge=1)
    calibration_bins: int = Field(15, ge=2, le=100)
    top_k: int = Field(5, ge=1, le=20)
    tta_flip: bool = False
    promotion_level: float = _number(0.05, gt=0.0, le=1.0)


class AnalysisConfig(_Section):
    gallery_size: int = Field(25, ge=1, le=400)
    confused_pairs: int = Field(6, ge=1, le=50)
    confused_examples: int = Field(4, ge=1, le=20)
    label_error_confidence: float = _number(0.8, ge=0.0, le=1.0)
    score_bar_ids: list[NonNegativeInt] = _list([])
    score_bar_images: int = Field(6, ge=0, le=50)
    score_bar_classes: int = Field(10, ge=2, le=100)
    bootstrap_resamples: int = Field(2000, ge=100)
    confidence_level: float = _number(0.95, gt=0.5, le=1.0)
    thumbnail_size: int = Field(96, ge=16, le=512)


class DuplicatesConfig(_Section):
    similarity_threshold: float = _number(0.85, gt=0.0, le=1.0)
    policy: DuplicatePolicy = "report"


class MlflowConfig(_Section):
    experiment: str = "imgclf"


class Params(_Section):
    seed: int = Field(42, ge=0, le=2**32 - 1)  # NumPy's and TensorFlow's seed range
    deterministic: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    scratch: ScratchConfig = Field(default_factory=ScratchConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    duplicates: DuplicatesConfig = Field(default_factory=DuplicatesConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    @model_validator(mode="after")
    def _cross_field(self) -> Params:
        _check_cross_field(self)
        return self


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
# `make run`) and scripts/retrain.sh, which runs on pull requests, so a bomb committed there stops in well under a
# second with one line. A bare `dvc repro` or `dvc params diff` typed by hand still parses the file unchecked:
# nothing of ours runs before it.
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
    """Build `Params` from a plain mapping (parsed YAML), validating every key; the first problem found is raised
    as one `ConfigError` line naming the source, the dotted key, what is allowed and what was given."""
    check_plain_mapping(raw, source=source)
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_explain(error, source=source)) from None


def params_to_dict(params: Params) -> dict[str, Any]:
    """The configuration as plain nested dicts (for logging and for writing a params file)."""
    return params.model_dump()


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


def coordinator_address(coordinator: str) -> tuple[str, int]:
    """`training.coordinator` as (host, port): `10.0.0.1:4455`, `[::1]:0` (brackets dropped); ValueError otherwise."""
    host, separator, port = coordinator.rpartition(":")
    if not separator or not host.strip("[]") or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"training.coordinator: expected host:port (e.g. 10.0.0.1:4455, or 127.0.0.1:0 for any free "
                         f"port of this machine), got {coordinator!r}")
    return host.strip("[]"), int(port)


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
    if params.training.distribute == "multi_worker":
        for section in ("scratch", "transfer"):
            batch_size = getattr(params, section).batch_size
            if batch_size % params.training.workers:
                raise ValueError(f"{section}.batch_size: {batch_size} images cannot be split evenly between "
                                 f"training.workers: {params.training.workers} processes; pick a multiple of the "
                                 "workers")
    coordinator_address(params.training.coordinator)
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


def _explain(error: ValidationError, *, source: str) -> str:
    """pydantic's first error (an unknown key first, as a typo is the likeliest cause) as one line."""
    problems = error.errors(include_url=False)
    problem = next((p for p in problems if p["type"] == "extra_forbidden"), problems[0])
    kind, loc, value = problem["type"], tuple(problem["loc"]), problem["input"]
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" if index else str(part)
                  for index, part in enumerate(loc))
    where = key or "top level"
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1])
        parent = ".".join(str(part) for part in loc[:-1]) or "top level"
        return (f"{source}: unknown key {key!r}; allowed keys under {parent}: "
                f"{', '.join(sorted(section.model_fields))}")
    if kind == "value_error" and not loc:  # a cross-field check: its message names its keys
        return f"{source}: {problem['ctx']['error']}"
    annotation, metadata = _field_at(loc)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{source}: {where}: expected a mapping of keys, got {value!r}"
    if kind == "finite_number":
        return f"{source}: {where}: expected a finite number, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{source}: {where}: expected a value {_describe_range(metadata)}, got {value!r}"
    if annotation is not None:
        return f"{source}: {where}: expected {_describe(annotation)}, got {value!r}"
    return f"{source}: {where}: {problem['msg']}, got {value!r}"


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    section: type[BaseModel] = Params
    for name in loc:
        section = section.model_fields[name].annotation
    return section


def _field_at(loc: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """The annotation (Annotated stripped) and the constraints of the value at `loc`; (None, []) for a section."""
    annotation: Any = Params
    metadata: list[Any] = []
    for part in loc:
        if isinstance(part, int):  # a list item
            annotation, metadata = _unwrap(typing.get_args(annotation)[0])
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
            info = annotation.model_fields[part]
            annotation, metadata = info.annotation, list(info.metadata)
        else:
            return None, []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return None, []
    return annotation, metadata


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        return base, [item for extra in extras for item in getattr(extra, "metadata", [extra])]
    return annotation, []


def _describe(annotation: Any) -> str:
    annotation = _unwrap(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(annotation))
    if origin is list:
        return f"a list of {_describe(typing.get_args(annotation)[0]).removeprefix('an ').removeprefix('a ')}s"
    if annotation is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[annotation]


def _describe_range(metadata: list[Any]) -> str:
    parts = []
    for constraint in metadata:
        for name, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(constraint, name, None) is not None:
                parts.append(f"{sign} {getattr(constraint, name)}")
    return " and ".join(parts)


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
        if isinstance(value, BaseModel):  # a section: its keys are checked one by one as they are read
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
