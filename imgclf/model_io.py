"""Model files: the custom layers a saved model needs, and `.keras` files written and read safely.

Below every phase: the trainers write models, evaluate and serving read them, and any of them loads a model only
after this module has registered the custom layers (`BackboneInput`, `ScaledBias`, `ShiftedBatchNorm`,
`PartialIdentity`). Architectures live in `imgclf.training.scratch_model` and `imgclf.training.transfer_model`, the
backbone registry in `imgclf.training.backbones`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np

from imgclf import fileio
from imgclf.errors import ModelConfigError, ModelFileError

MODEL_PACKAGE = "imgclf"

@keras.saving.register_keras_serializable(package=MODEL_PACKAGE)
class BackboneInput(keras.layers.Layer):
    """Raw [0, 255] pixels -> what an ImageNet backbone expects: three channels and its own scaling.

    Modes follow `keras.applications`: `caffe` (BGR, ImageNet mean subtracted), `tf` ([-1, 1]),
    `torch` (ImageNet mean/std), `none` (the backbone normalises inside, like EfficientNet).
    """

    _CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
    _TORCH_MEAN = (0.485, 0.456, 0.406)
    _TORCH_STD = (0.229, 0.224, 0.225)

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "none"):
            raise ModelConfigError(f"unknown backbone preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, inputs):
        pixels = keras.ops.cast(inputs, "float32")
        if pixels.shape[-1] == 1:  # grey data sets (MNIST) give a backbone three identical channels
            pixels = keras.ops.repeat(pixels, 3, axis=-1)
        if self.mode == "caffe":
            return pixels[..., ::-1] - keras.ops.convert_to_tensor(self._CAFFE_MEAN_BGR)
        if self.mode == "tf":
            return pixels / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(self._TORCH_MEAN)
            std = keras.ops.convert_to_tensor(self._TORCH_STD)
            return (pixels / 255.0 - mean) / std
        return pixels

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}



@keras.saving.register_keras_serializable(package=MODEL_PACKAGE)
class ScaledBias(keras.layers.Layer):
    """Adds `multiplier * bias`, one bias per channel: BatchNorm's shift with a faster learning rate.

    With the output bias stored as `multiplier * v`, an SGD step on `v` moves the bias `multiplier**2` times as far
    as a step on a plain bias would: airbench's 64x learning rate for BatchNorm biases (multiplier 8) without a
    second optimizer. Weight decay shrinks `v`, and so the bias, by the same fraction as every other weight.
    """

    def __init__(self, multiplier: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.multiplier = multiplier

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, inputs):
        return inputs + self.multiplier * keras.ops.cast(self.bias, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "multiplier": self.multiplier}


@keras.saving.register_keras_serializable(package=MODEL_PACKAGE)
class ShiftedBatchNorm(keras.layers.BatchNormalization):
    """BatchNorm without a learned scale, its shift a `ScaledBias` (`multiplier * bias`): the residual net's norm.

    The same function as `BatchNormalization(center=False, scale=False)` followed by `ScaledBias(multiplier)`, in
    one layer so that on TensorFlow it runs as one fused kernel (`FusedBatchNormV3`) forward and one backward.
    Keras' own layer runs a dozen separate ops there (casts to float32, moments, normalise, cast back, then the
    bias add): the residual net's six norms with their activations took 1.71 s of a bfloat16 step at batch 512
    against 0.97 s fused, and 1.11 against 0.72 s in float32 (`python -m bench.norm_cost`, BENCHMARKS.md; an AVX2
    CPU, the norms alone). Other backends, masks and synchronised statistics take Keras' path plus the shift (JAX
    compiles it, fusing the elementwise ops). Moving statistics, their momentum and BatchNorm re-estimation
    (`fitting.reestimate_batch_norm`) behave exactly as in Keras' layer.
    """

    def __init__(self, multiplier: float = 1.0, **kwargs):
        kwargs.update(center=False, scale=False)
        super().__init__(**kwargs)
        self.multiplier = multiplier

    def build(self, input_shape):
        super().build(input_shape)
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, inputs, training=None, mask=None):
        if (keras.backend.backend() == "tensorflow" and mask is None and not self.synchronized
                and len(inputs.shape) == 4 and self.axis in (-1, 3)):
            return self._fused_call(inputs, batch_statistics=bool(training) and self.trainable)
        outputs = super().call(inputs, training=training, mask=mask)
        return outputs + self.multiplier * keras.ops.cast(self.bias, outputs.dtype)

    def _fused_call(self, inputs, *, batch_statistics: bool):
        # TensorFlow only here (the branch above), and imported here so that the other backends never load it.
        import tensorflow as tf

        channels = inputs.shape[-1]
        offset = self.multiplier * tf.cast(self.bias, "float32")
        if not batch_statistics:
            outputs, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=tf.ones((channels,)), offset=offset, mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"), epsilon=self.epsilon, is_training=False)
            return outputs
        # Empty mean and variance: the kernel normalises with the batch's and returns them.
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.ones((channels,)), offset=offset, mean=tf.zeros((0,)), variance=tf.zeros((0,)),
            epsilon=self.epsilon, is_training=True, exponential_avg_factor=1.0)
        # The kernel returns the unbiased (n - 1) batch variance; Keras keeps the population one, as it normalises.
        count = tf.cast(tf.size(inputs) // channels, "float32")
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + tf.cast(mean, self.moving_mean.dtype)
                                * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + tf.cast(variance, self.moving_variance.dtype) * (1.0 - self.momentum))
        return outputs

    def get_config(self):
        config = super().get_config()
        for key in ("center", "scale"):  # fixed by the layer, not settings
            config.pop(key, None)
        return {**config, "multiplier": self.multiplier}


@keras.saving.register_keras_serializable(package=MODEL_PACKAGE)
class PartialIdentity(keras.initializers.Initializer):
    """A conv kernel whose first min(in, out) filters pass their input channel through (a centre-tap delta).

    The rest are drawn like PyTorch's default conv init (uniform, bound 1/sqrt(fan_in)), as in airbench. At
    initialisation each block then carries its input forward unchanged, as a residual connection would, so a
    deep plain stack trains at a high learning rate from the first step (the "Dirac" initialisation).
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        height, width, channels_in, channels_out = shape
        random = keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform",
                                                    seed=self.seed)(shape, dtype=dtype)
        identity = np.zeros(shape, dtype="float32")
        kept = min(channels_in, channels_out)
        identity[height // 2, width // 2, np.arange(kept), np.arange(kept)] = 1.0
        is_identity_filter = np.zeros((1, 1, 1, channels_out), dtype=bool)
        is_identity_filter[..., :kept] = True
        return keras.ops.where(is_identity_filter, keras.ops.cast(identity, random.dtype), random)

    def get_config(self):
        return {"seed": self.seed}

# The description members of a `.keras` zip. Keras reads each whole into memory and parses it: a 1 GB config.json
# took 2.8 GB of RAM before its error. A model's is kilobytes (ResNet50's about 100 KB), so this bound is generous.
MODEL_DESCRIPTION_MEMBERS = ("config.json", "metadata.json")
MAX_MODEL_DESCRIPTION_BYTES = 16 << 20


def check_model_file(path: Path, *, remedy: str) -> None:
    """Refuse, from the zip directory alone (nothing is decompressed), a `.keras` file whose config.json or
    metadata.json is larger than any model's (MAX_MODEL_DESCRIPTION_BYTES): a `ModelFileError` naming the file."""
    try:
        with zipfile.ZipFile(path) as bundle:
            members = bundle.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ModelFileError(f"{path} is not a Keras model file ({error}); {remedy}") from error
    for info in members:
        if info.filename in MODEL_DESCRIPTION_MEMBERS and info.file_size > MAX_MODEL_DESCRIPTION_BYTES:
            raise ModelFileError(f"{path} is not a Keras model file as a training stage writes it: its {info.filename} "
                                 f"is {info.file_size / (1 << 20):.0f} MB, past the "
                                 f"{MAX_MODEL_DESCRIPTION_BYTES >> 20} MB any model's takes; {remedy}")


def load_model(path: Path, *, remedy: str = "run the stage that wrote it again (dvc repro --force STAGE)"
               ) -> keras.Model:
    """Load a model saved by this project; importing this module registered its custom layers.

    A file Keras cannot read (corrupt, truncated, not a model, refused by safe mode) or with an oversized
    description (`check_model_file`, checked first) is a `ModelFileError` whose message ends with `remedy`, what
    the caller's user should do about it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found; run the training stage first (dvc repro)")
    check_model_file(path, remedy=remedy)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (ValueError, OSError, zipfile.BadZipFile) as error:  # how Keras reports a file that is no model
        raise ModelFileError(f"{path} is not a Keras model file ({error}); {remedy}") from error


# The earliest time a zip entry can record, the one Keras already gives two of the three entries of a `.keras` file.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_KERAS_METADATA = "metadata.json"  # Keras writes it and never reads it back
_KERAS_CONFIG = "config.json"


def save_model(model: keras.Model, path: Path) -> None:
    """Save architecture and weights for inference, without the optimizer's state and the save time, to a
    temporary `.keras` file beside `path`, then rename: a killed stage leaves no broken model, and a file `path`
    links to (a DVC cache entry) is replaced, never written through.

    A `.keras` file of a compiled model carries the optimizer's variables: Adam's two moments made the seed CNN's
    file three times its weights (228.6 MB for 76.2 MB at 96 px), stored again in DVC's cache and MLflow. Nothing
    reads them: every stage and `imgclf predict` load models uncompiled, and a killed training resumes from its
    own backups (`fitting.ResumeState`). Reloading the file uncompiled, as they do, and saving that gives the
    weights alone, restored by Keras' own loader (a `Normalization` layer's derived statistics included).

    Keras also writes the time of saving and the memory addresses of shared objects into the file, so the same
    model saved twice (the feature extractor of an unchanged backbone, whenever extract_features reruns) had two
    digests: two entries in DVC's cache, and two registry versions of one model. Without them, the same model is
    the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch, \
            fileio.atomic_path(path, suffix=".keras") as temporary:
        saved = Path(scratch) / "model.keras"  # Keras insists on the extension
        model.save(saved)
        if model.compiled:  # only a compiled model saves an optimizer (a compiled head inside one does not)
            keras.models.load_model(saved, compile=False, safe_mode=True).save(saved)
        _copy_without_save_time(saved, temporary)


def _copy_without_save_time(source: Path, target: Path) -> None:
    """Copy a `.keras` file entry by entry, each dated `_ZIP_EPOCH`, its metadata without `date_saved` and its
    shared objects numbered in order of appearance."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for entry in original.infolist():
            dated = zipfile.ZipInfo(entry.filename, date_time=_ZIP_EPOCH)
            dated.compress_type, dated.external_attr = entry.compress_type, entry.external_attr
            if entry.filename == _KERAS_METADATA:
                metadata = json.loads(original.read(entry))
                metadata.pop("date_saved", None)
                copy.writestr(dated, json.dumps(metadata))
                continue
            if entry.filename == _KERAS_CONFIG:
                copy.writestr(dated, json.dumps(_renumber_shared_objects(json.loads(original.read(entry)))))
                continue
            with original.open(entry) as reader, copy.open(dated, "w", force_zip64=True) as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)


def _renumber_shared_objects(config):
    """Keras gives an object serialised more than once a `shared_object_id`, its address in memory (another
    number in every process), to restore it once on loading. Any numbering that tells them apart does that."""
    numbers: dict[int, int] = {}

    def renumbered(node):
        if isinstance(node, dict):
            return {key: numbers.setdefault(value, len(numbers)) if key == "shared_object_id" else renumbered(value)
                    for key, value in node.items()}
        return [renumbered(item) for item in node] if isinstance(node, list) else node

    return renumbered(config)
