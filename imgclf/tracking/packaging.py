"""MLflow model packaging: a trained `.keras` model plus the preprocessing facts of its data, as one pyfunc image
classifier (`Classifier`, `ImageClassifier`), logged into a training run by the evaluate stage (`log_model`).

Everything that turns image files into class probabilities goes through `Classifier`: the `imgclf predict`
command, the MLflow pyfunc model that `mlflow models serve` runs, and `imgclf export` (`imgclf.serving`). It
decodes with the preprocess stage's own code (`imgclf.data.images.decode_file`, same mode and resize policy), so a
served image becomes exactly the pixels a training image became.

Each training run gets the pyfunc model under the name `model` (`runs:/<run_id>/model`), logged by the evaluate
stage rather than by the trainers, so that editing how a model is packaged never retrains one. Its artifacts are
the `.keras` file and `preprocessing.json` (class names, image size, channels, resize policy, from the
prepared data's `meta.json`); the `imgclf` package travels with it (`code_paths`), so it loads anywhere the
pinned requirements are installed. It takes a DataFrame with a string column `image` of base64-encoded image
files and returns, per row, `predicted_class`, its `probability` and one `probability_<class>` column per
class.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from imgclf import artifacts, fileio, model_io
from imgclf.artifacts import PreparedMeta
from imgclf.data import images
from imgclf.errors import ModelSourceError, UserError
from imgclf.tracking.registry import LOGGED_MODEL_NAME

MODEL_ARTIFACT = "keras_model"

PREPROCESSING_ARTIFACT = "preprocessing"

PREPROCESSING_KEYS = ("class_names", "image_size", "channels", "resize")

MODEL_CODE_FILE = "imgclf_model.py"

# MLflow's models-from-code: the logged model is this script, not a pickle; it runs with the logged `imgclf`
# package (code_paths) on sys.path.
MODEL_CODE = ('"""The imgclf image classifier, as MLflow models-from-code (see imgclf/tracking/packaging.py)."""\n'
              "import mlflow\n\nfrom imgclf.tracking.packaging import ImageClassifier\n\n"
              "mlflow.models.set_model(ImageClassifier())\n")

IMAGE_COLUMN = "image"

# What one request to the served model may hold, refused (HTTP 400) before anything is decoded: the scoring server
# itself bounds only the time (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, 60 s), not what a request makes it decode.
MAX_REQUEST_IMAGES = 64

MAX_REQUEST_BYTES = 32 << 20  # of base64 text, all images together

# Pixels per served image, from its header (after JPEG's reduced-size decoding, so any phone photo passes): far
# below Pillow's decompression-bomb limit (179 M, set in imgclf/data/images.py), which let a 258 KB PNG of
# 13000x13000 pixels through (0.5 GB of RGB, 3 s to decode each).
MAX_IMAGE_PIXELS = 16_000_000

PREDICTED_CLASS = "predicted_class"

PROBABILITY = "probability"

BATCH_SIZE = 64


class InvalidImageError(UserError):
    """An input that is not a readable image; the message is the reason shown per file or row."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How the preprocess stage turned image files into model input: what serving must repeat."""

    class_names: tuple[str, ...]
    image_size: int
    channels: int
    resize: str

    @classmethod
    def from_meta(cls, meta: Any, *, source: str) -> Preprocessing:
        """The preprocessing facts of a prepared data set's `meta.json` (or a logged `preprocessing.json`)."""
        remedy = "give the meta.json that the preprocess stage wrote for the model's data (data/prepared/meta.json)"
        if not isinstance(meta, dict):
            raise ModelSourceError(f"{source} is not a JSON object of preprocessing facts; {remedy}")
        missing = [key for key in PREPROCESSING_KEYS if key not in meta]
        if missing:
            raise ModelSourceError(f"{source} lacks {', '.join(missing)}; {remedy}")
        problem = artifacts.preprocessing_problem(meta)
        if problem:
            raise ModelSourceError(f"{source}: {problem}; {remedy}")
        return cls(tuple(meta["class_names"]), meta["image_size"], meta["channels"], meta["resize"])

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "class_names": list(self.class_names)}


class Classifier:
    """A Keras model (raw 0-255 pixels in, class probabilities out) with the preprocessing of its data."""

    def __init__(self, model: keras.Model, preprocessing: Preprocessing):
        expected = (preprocessing.image_size, preprocessing.image_size, preprocessing.channels)
        if tuple(model.input_shape[1:]) != expected:
            raise ModelSourceError(f"the model takes {tuple(model.input_shape[1:])} pixels but its meta.json "
                                   f"describes {expected} images: give the meta.json of the data it was trained on")
        if model.output_shape[-1] != len(preprocessing.class_names):
            raise ModelSourceError(f"the model has {model.output_shape[-1]} outputs but its meta.json names "
                                   f"{len(preprocessing.class_names)} classes: give the meta.json of its data")
        self.model = model
        self.preprocessing = preprocessing

    @classmethod
    def from_files(cls, model_file: Path, preprocessing_file: Path) -> Classifier:
        """Load a `.keras` file and the `meta.json` (or `preprocessing.json`) of its data."""
        model_file, preprocessing_file = Path(model_file), Path(preprocessing_file)
        if not model_file.is_file():
            raise ModelSourceError(f"model file {model_file} not found; give a .keras file or an MLflow model URI "
                                   "(runs:/<run_id>/model, models:/imgclf-transfer@champion)")
        if not preprocessing_file.is_file():
            raise ModelSourceError(f"{preprocessing_file} not found: a .keras model needs the meta.json of its "
                                   "prepared data for class names and image size; pass --meta PATH (or run the "
                                   "preprocess stage: dvc repro preprocess)")
        preprocessing = Preprocessing.from_meta(fileio.read_json(preprocessing_file), source=str(preprocessing_file))
        model = model_io.load_model(model_file, remedy="give a .keras file saved by a training stage")
        return cls(model, preprocessing)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.preprocessing.class_names

    def decode(self, source: Path | bytes, *, max_pixels: int | None = None) -> np.ndarray:
        """Pixels of one image file (path or its bytes), as the preprocess stage decoded training images;
        `max_pixels` refuses a larger image before decoding it (serving)."""
        # decode_file hands its argument to PIL.Image.open, which reads paths and binary file objects alike.
        handle = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
        if isinstance(handle, Path) and handle.exists() and not handle.is_file():
            raise InvalidImageError("not a regular file (a folder, FIFO or device); never opened")  # a FIFO blocks
        try:
            return images.decode_file(handle, image_size=self.preprocessing.image_size,
                                      resize=self.preprocessing.resize, channels=self.preprocessing.channels,
                                      max_pixels=max_pixels)
        except images.ImageDecodeError as error:
            raise InvalidImageError(f"not a readable image ({error})") from error

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of a batch of decoded images (N, size, size, channels)."""
        if len(pixels) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return np.asarray(self.model.predict(np.asarray(pixels, dtype=np.float32), batch_size=BATCH_SIZE, verbose=0))


def probability_columns(class_names: Sequence[str]) -> list[str]:
    """One readable output column per class: `probability_<class name>`."""
    return [f"{PROBABILITY}_{name}" for name in class_names]


def prediction_frame(probabilities: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Per row: the most probable class, its probability and every class's probability."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(class_names))
    best = probabilities.argmax(axis=1)
    frame = pd.DataFrame({PREDICTED_CLASS: pd.Series([class_names[i] for i in best], dtype=object),
                          PROBABILITY: probabilities[np.arange(len(best)), best]})
    columns = pd.DataFrame(probabilities, columns=probability_columns(class_names))
    return pd.concat([frame, columns], axis=1)


def decode_base64(text: str) -> bytes:
    """The bytes of a base64 image; tolerates line breaks and a `data:image/...;base64,` prefix."""
    if not isinstance(text, str):
        raise InvalidImageError(f"expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidImageError(f"not valid base64 ({error})") from error


def encode_png(pixels: np.ndarray) -> bytes:
    """A decoded image (size, size, 1 or 3) as PNG bytes: lossless, so it decodes back to the same pixels."""
    pixels = np.clip(np.asarray(pixels), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0], mode="L") if pixels.shape[-1] == 1 else Image.fromarray(pixels, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The logged model: base64 image files in (column `image`), one prediction per row out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self._classifier = Classifier.from_files(Path(context.artifacts[MODEL_ARTIFACT]),
                                                 Path(context.artifacts[PREPROCESSING_ARTIFACT]))

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                f"expected a DataFrame with a string column {IMAGE_COLUMN!r} of base64-encoded image files")
        texts = model_input[IMAGE_COLUMN].tolist()
        size = sum(len(text) for text in texts if isinstance(text, str))
        if len(texts) > MAX_REQUEST_IMAGES or size > MAX_REQUEST_BYTES:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                f"cannot classify: {len(texts)} images and {size / (1 << 20):.1f} MB of base64 in one request, past "
                f"the limits of {MAX_REQUEST_IMAGES} images and {MAX_REQUEST_BYTES >> 20} MB; split the request")
        pixels, problems = [], []
        for row, text in enumerate(texts):
            try:
                pixels.append(self._classifier.decode(decode_base64(text), max_pixels=MAX_IMAGE_PIXELS))
            except InvalidImageError as error:
                problems.append(f"row {row}: {error}")
        if problems:
            # The whole request fails (HTTP 400) and names every bad row, rather than returning rows a
            # client could mistake for predictions.
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                "cannot classify: " + "; ".join(problems))
        return prediction_frame(self._classifier.probabilities(np.stack(pixels) if pixels else np.zeros(0)),
                                self._classifier.class_names)


def model_signature(class_names: Sequence[str]) -> mlflow.models.ModelSignature:
    """A string column `image` in; the predicted class, its probability and one column per class out."""
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", PREDICTED_CLASS), ColSpec("double", PROBABILITY),
               *(ColSpec("double", column) for column in probability_columns(class_names))]
    return mlflow.models.ModelSignature(inputs=Schema([ColSpec("string", IMAGE_COLUMN)]), outputs=Schema(outputs))


def log_model(model_file: Path, meta: PreparedMeta, example_pixels: np.ndarray) -> mlflow.models.model.ModelInfo:
    """Log the pyfunc image classifier as `model` in the active run, once: a model logged earlier in the same
    run (a resumed stage killed after logging) is deleted after the new one is logged.

    `example_pixels` is one decoded image of the data, logged as a base64 PNG input example."""
    preprocessing = Preprocessing.from_meta(meta.to_dict(), source=artifacts.META_FILE)
    run_id = mlflow.active_run().info.run_id
    earlier = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}' AND name = '{LOGGED_MODEL_NAME}'", output_format="list")
    example = pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(encode_png(example_pixels)).decode("ascii")]})
    with tempfile.TemporaryDirectory() as staging:
        preprocessing_file, code_file = Path(staging) / artifacts.PREPROCESSING_FILE, Path(staging) / MODEL_CODE_FILE
        fileio.atomic_write_json(preprocessing_file, preprocessing.to_dict())
        fileio.atomic_write_text(code_file, MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL_NAME, python_model=str(code_file),
            artifacts={MODEL_ARTIFACT: str(model_file), PREPROCESSING_ARTIFACT: str(preprocessing_file)},
            # The package itself travels with the model: it defines the pyfunc class and the custom layers.
            code_paths=[str(Path(__file__).resolve().parents[1])],
            signature=model_signature(preprocessing.class_names), input_example=example,
            pip_requirements=pip_requirements())
    client = mlflow.MlflowClient()
    for model in earlier:
        client.delete_logged_model(model.model_id)
    return info


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged model, taken from this environment (no slow inference)."""
    from importlib import metadata

    names = ["keras", "numpy", "pillow", "pyyaml"]  # pyyaml: imgclf.config, imported by the logged model's code
    try:
        metadata.version("tensorflow-cpu")
        names.append("tensorflow-cpu")
    except metadata.PackageNotFoundError:
        names.append("tensorflow")
    requirements = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            requirements.append(f"{name}=={metadata.version(name)}")
    return requirements
