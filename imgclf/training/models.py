"""Model builders in pure `keras` (any backend): the seed CNN, ImageNet backbones and the transfer head.

Every model takes raw pixels in [0, 255] at the prepared image size, so a saved `.keras` file classifies
images in production with no preprocessing code beside it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np

from imgclf import fileio
from imgclf.config import ScratchConfig, TransferConfig
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


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    constructor: str  # attribute of keras.applications
    preprocessing: str  # BackboneInput mode
    min_input_size: int = 32


# Each backbone with the input scaling its ImageNet weights were trained with.
BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec("ResNet50", "caffe"),
    "resnet101": BackboneSpec("ResNet101", "caffe"),
    "resnet50_v2": BackboneSpec("ResNet50V2", "tf"),
    "vgg16": BackboneSpec("VGG16", "caffe"),
    "vgg19": BackboneSpec("VGG19", "caffe"),
    "mobilenet_v2": BackboneSpec("MobileNetV2", "tf"),
    "mobilenet_v3_small": BackboneSpec("MobileNetV3Small", "none"),
    "mobilenet_v3_large": BackboneSpec("MobileNetV3Large", "none"),
    "efficientnet_b0": BackboneSpec("EfficientNetB0", "none"),
    "efficientnet_b1": BackboneSpec("EfficientNetB1", "none"),
    "efficientnet_v2_b0": BackboneSpec("EfficientNetV2B0", "none"),
    "densenet121": BackboneSpec("DenseNet121", "torch"),
    "inception_v3": BackboneSpec("InceptionV3", "tf", min_input_size=75),
    "xception": BackboneSpec("Xception", "tf", min_input_size=71),
    "convnext_tiny": BackboneSpec("ConvNeXtTiny", "none"),
}


def build_scratch_model(config: ScratchConfig, *, input_shape: tuple[int, int, int],
                        num_classes: int) -> keras.Model:
    """The from-scratch model `scratch.architecture` names: the seed CNN or the residual net."""
    if config.architecture == "residual":
        return build_residual_model(config, input_shape=input_shape, num_classes=num_classes)
    return build_seed_cnn(config, input_shape=input_shape, num_classes=num_classes)


def build_seed_cnn(config: ScratchConfig, *, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The write-up's sequential CNN, layer by layer from params.

    Each conv block: Conv2D (3x3, same, ReLU) -> [MaxPool 2x2 if listed in pool_after] -> Dropout ->
    [BatchNorm]; then Flatten -> Dropout; each dense block: Dense (ReLU, MaxNorm) -> Dropout ->
    [BatchNorm]; then a softmax classifier. Seed values give 2,264,458 parameters on 32x32x3, 10 classes.
    """
    constraint = keras.constraints.MaxNorm(config.max_norm) if config.max_norm else None
    layers: list[keras.layers.Layer] = [keras.Input(shape=input_shape, name="pixels"),
                                        keras.layers.Rescaling(1.0 / 255, name="rescale")]
    for block, filters in enumerate(config.conv_filters, start=1):
        layers.append(keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}"))
        if block in config.pool_after:
            layers.append(keras.layers.MaxPooling2D(2, name=f"pool{block}"))
        layers.append(keras.layers.Dropout(config.dropout, name=f"conv{block}_dropout"))
        if config.batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"conv{block}_bn"))
    layers += [keras.layers.Flatten(name="flatten"), keras.layers.Dropout(config.dropout, name="flat_dropout")]
    for block, units in enumerate(config.dense_units, start=1):
        layers.append(keras.layers.Dense(units, activation="relu", kernel_constraint=constraint,
                                         name=f"dense{block}"))
        layers.append(keras.layers.Dropout(config.dropout, name=f"dense{block}_dropout"))
        if config.batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"dense{block}_bn"))
    # float32 probabilities even under a mixed-precision policy: a float16 softmax loses small classes.
    layers.append(keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier"))
    return keras.Sequential(layers, name="scratch_cnn")


WHITEN_LAYER = "whiten"
WHITEN_PATCH_SIZE = 2
# Added to the patch covariance's eigenvalues (in per-channel standardised units, as airbench) so that the
# near-zero directions are not amplified into noise.
WHITEN_EPSILON = 5e-4
# Keras' 0.99 needs hundreds of steps to forget the initial statistics; a 10-epoch run at batch 512 has ~900.
RESIDUAL_BATCH_NORM_MOMENTUM = 0.9
# airbench's BatchNorm epsilon. Weight decay shrinks the (scale-invariant) conv kernels by a factor of ten over a
# run, and the pre-norm variance with them: Keras' 1e-3 would then damp every channel, a hidden extra decay.
RESIDUAL_BATCH_NORM_EPSILON = 1e-12


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


def build_residual_model(config: ScratchConfig, *, input_shape: tuple[int, int, int],
                         num_classes: int) -> keras.Model:
    """An airbench94-shaped net: frozen patch-whitening 2x2 conv -> conv blocks -> global max -> scaled linear head.

    Each block: Conv 3x3 -> MaxPool 2x2 -> BatchNorm -> act -> Conv 3x3 -> BatchNorm -> act, with identity-
    initialised convs (`PartialIdentity`) and BatchNorm without a learned scale (it would only duplicate the
    next conv's); its shift is a `ScaledBias` that learns `residual_bias_lr_scale` times faster under SGD. The
    whitening layer's weights are a placeholder until `set_patch_whitening` computes them from training pixels
    (the training stage does; the model itself never sees the data layer).
    """
    channels = input_shape[-1]
    side = min(input_shape[0], input_shape[1]) - (WHITEN_PATCH_SIZE - 1)
    for _ in config.residual_widths:
        side //= 2
    if side < 1:
        raise ModelConfigError(f"scratch.residual_widths: {len(config.residual_widths)} blocks halve "
                               f"{input_shape[0]}x{input_shape[1]} images below one pixel; use fewer blocks or "
                               "larger images (preprocess.image_size)")
    activation = config.residual_activation
    bias_multiplier = float(np.sqrt(config.residual_bias_lr_scale))
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    whiten_filters = 2 * WHITEN_PATCH_SIZE * WHITEN_PATCH_SIZE * channels
    # Frozen: whitening is a fixed change of basis; training it would undo the conditioning it buys.
    x = keras.layers.Conv2D(whiten_filters, WHITEN_PATCH_SIZE, padding="valid", trainable=False,
                            name=WHITEN_LAYER)(x)
    x = keras.layers.Activation(activation, name="whiten_act")(x)
    for block, width in enumerate(config.residual_widths, start=1):
        for position in (1, 2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=PartialIdentity(),
                                    name=f"block{block}_conv{position}")(x)
            if position == 1:
                x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
            x = keras.layers.BatchNormalization(center=False, scale=False, momentum=RESIDUAL_BATCH_NORM_MOMENTUM,
                                                epsilon=RESIDUAL_BATCH_NORM_EPSILON,
                                                name=f"block{block}_bn{position}")(x)
            x = ScaledBias(bias_multiplier, name=f"block{block}_shift{position}")(x)
            x = keras.layers.Activation(activation, name=f"block{block}_act{position}")(x)
    x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, use_bias=False, name="classifier")(x)
    # A small constant on the logits stands in for a lower head learning rate (airbench's 1/9).
    logits = keras.layers.Rescaling(config.residual_head_scale, name="head_scale")(logits)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="scratch_residual")


def patch_whitening_weights(images: np.ndarray, *, patch_size: int = WHITEN_PATCH_SIZE,
                            epsilon: float = WHITEN_EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of a `patch_size` conv on [0, 1] pixels that whitens the patches of `images`.

    `images`: raw [0, 255] pixels, (N, H, W, C). The filters are the eigenvectors of the patches' covariance
    (channels standardised first, as airbench does), divided by the square root of their eigenvalues, each with
    its negative so that a following GELU/ReLU keeps both signs. The bias subtracts the mean patch.
    """
    pixels = np.asarray(images, dtype=np.float32) / 255.0
    if pixels.ndim != 4 or len(pixels) == 0:
        raise ValueError(f"patch whitening needs a non-empty (N, H, W, C) batch of images, got {pixels.shape}")
    channel_std = pixels.std(axis=(0, 1, 2)) + 1e-6
    windows = np.lib.stride_tricks.sliding_window_view(pixels / channel_std, (patch_size, patch_size), axis=(1, 2))
    # (N, H', W', C, kh, kw) -> rows in the (kh, kw, C) order of a Keras conv kernel
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, patch_size * patch_size * pixels.shape[-1])
    mean = patches.mean(axis=0, dtype=np.float64)
    centred = patches - mean.astype(np.float32)
    covariance = (centred.T.astype(np.float64) @ centred.astype(np.float64)) / max(1, len(centred) - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    filters = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + epsilon)  # columns: one filter each
    filters = np.concatenate([filters, -filters], axis=1)
    kernel = filters.reshape(patch_size, patch_size, pixels.shape[-1], -1)
    bias = -(mean @ filters)
    kernel = kernel / channel_std[None, None, :, None]  # fold the standardisation into the weights
    return kernel.astype(np.float32), bias.astype(np.float32)


def set_patch_whitening(model: keras.Model, images: np.ndarray) -> None:
    """Set the residual net's whitening layer from a batch of raw training images (call before fitting)."""
    layer = model.get_layer(WHITEN_LAYER)
    kernel, bias = patch_whitening_weights(images, patch_size=layer.kernel_size[0])
    layer.set_weights([kernel, bias])


def load_backbone(config: TransferConfig) -> tuple[keras.Model, str]:
    """The backbone (headless, feature map out) and its preprocessing mode.

    `config.backbone` is a `keras.applications` name from BACKBONES, or a path to a `.keras` file that takes
    raw [0, 255] RGB and returns a feature map. `config.weights` is `imagenet`, null/`none` (random init) or a
    path to a weights file for the named architecture.
    """
    if config.backbone.endswith(".keras"):
        path = Path(config.backbone)
        if not path.is_file():
            raise ModelConfigError(f"transfer.backbone: backbone file {path} not found; give an existing "
                                   f".keras file or one of: {', '.join(BACKBONES)}")
        return load_model(path, remedy="give a .keras backbone that takes raw [0, 255] RGB and returns a "
                                        "feature map, or one of: " + ", ".join(BACKBONES)), "none"
    spec = BACKBONES.get(config.backbone)
    if spec is None:
        raise ModelConfigError(f"transfer.backbone: unknown backbone {config.backbone!r}; use one of "
                               f"{', '.join(BACKBONES)} or a path to a .keras file")
    if config.input_size < spec.min_input_size:
        raise ModelConfigError(f"transfer.input_size: {config.backbone} needs at least "
                               f"{spec.min_input_size} px, got {config.input_size}")
    weights = None if config.weights in (None, "none") else config.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ModelConfigError(f"transfer.weights: weights file {weights} not found; use imagenet, none, "
                               "or the path of a weights file for this architecture")
    constructor = getattr(keras.applications, spec.constructor)
    try:
        backbone = constructor(include_top=False, weights=weights,
                               input_shape=(config.input_size, config.input_size, 3))
    except Exception as error:  # network failures surface as many exception types
        if weights == "imagenet":
            raise ModelConfigError(
                f"could not load ImageNet weights for {config.backbone} ({error}). Offline? Set "
                "transfer.backbone to a local .keras backbone file (see README: working offline)") from error
        raise
    return backbone, spec.preprocessing


def build_feature_extractor(backbone: keras.Model, preprocessing: str, *,
                            input_shape: tuple[int, int, int], input_size: int) -> keras.Model:
    """Raw pixels -> resize to the backbone's input size -> backbone (inference mode) -> pooled features."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    pixels = inputs
    if input_shape[0] != input_size or input_shape[1] != input_size:
        pixels = keras.layers.Resizing(input_size, input_size, interpolation="bilinear", name="upsample")(pixels)
    pixels = BackboneInput(preprocessing, name="backbone_input")(pixels)
    # training=False keeps BatchNorm statistics frozen even when the backbone is later fine-tuned.
    feature_map = backbone(pixels, training=False)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(feature_map)
    return keras.Model(inputs, features, name="feature_extractor")


# A training feature's standard deviation counts as at least this fraction of the typical one (build_head).
HEAD_MIN_STD_FRACTION = 0.1


def build_head(config: TransferConfig, *, train_features: np.ndarray, num_classes: int) -> keras.Model:
    """The new classifier trained on cached features: Standardize -> Dropout -> [Dense ReLU] -> Dense softmax.

    Standardising with the training features' mean and variance makes the head's learning rate work for
    every backbone, whatever the scale of its features. A feature (nearly) constant in training, such as a ReLU
    unit no training image switches on (common with few images or a randomly initialised backbone), is not
    scaled up by the inverse of its tiny spread: that turned a small activation on a validation image into a
    z-score of 1e5 and a validation loss in the hundreds. Its spread is floored at `HEAD_MIN_STD_FRACTION` of
    the features' typical (root-mean-square) standard deviation.
    """
    inputs = keras.Input(shape=(train_features.shape[1],), name="features")
    normalize = keras.layers.Normalization(axis=-1, name="standardize")
    normalize.adapt(train_features)
    variance = keras.ops.convert_to_numpy(normalize.adapt_variance)
    floor = HEAD_MIN_STD_FRACTION ** 2 * float(variance.mean())
    if floor > 0:  # all features constant: nothing to learn from, and nothing to floor against
        normalize.adapt_variance.assign(np.maximum(variance, floor))
        normalize.finalize_state()  # the layer computes with constants derived from the adapted variables
    hidden = keras.layers.Dropout(config.head_dropout, name="head_dropout")(normalize(inputs))
    if config.head_units:
        hidden = keras.layers.Dense(config.head_units, activation="relu", name="head_dense")(hidden)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier")(hidden)
    return keras.Model(inputs, outputs, name="head")


def assemble_transfer_model(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """One end-to-end model, raw pixels to class probabilities, for evaluation and deployment."""
    inputs = keras.Input(shape=extractor.input_shape[1:], name="pixels")
    return keras.Model(inputs, head(extractor(inputs)), name="transfer")


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
