"""The backbone registry: each `keras.applications` backbone the transfer model can use, with the input scaling
its ImageNet weights were trained with.

No stage imports this module but check_params, which resolves `transfer.backbone` into `data/backbone.json`
(`resolve`); extract_features reads that file. Adding a backbone here therefore reruns check_params alone: the
resolved file of the backbone in use keeps its bytes, so nothing after it reruns (DVC compares outputs by content).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from imgclf.config import TransferConfig
from imgclf.errors import ModelConfigError

KERAS_FILE_SUFFIX = ".keras"


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


def resolve(config: TransferConfig) -> dict[str, Any]:
    """What extract_features needs to build `config.backbone`: a `keras.applications` constructor with its
    preprocessing mode, or the path of a `.keras` backbone file (which takes raw [0, 255] RGB itself)."""
    if config.backbone.endswith(KERAS_FILE_SUFFIX):
        return {"file": config.backbone, "preprocessing": "none", "min_input_size": 1}
    spec = BACKBONES.get(config.backbone)
    if spec is None:
        raise ModelConfigError(f"transfer.backbone: unknown backbone {config.backbone!r}; use one of "
                               f"{', '.join(BACKBONES)} or a path to a .keras file")
    if config.input_size < spec.min_input_size:
        raise ModelConfigError(f"transfer.input_size: {config.backbone} needs at least "
                               f"{spec.min_input_size} px, got {config.input_size}")
    return {"name": config.backbone, **dataclasses.asdict(spec)}
