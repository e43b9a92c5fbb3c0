"""Module-only float models: torchvision-compatible classifiers and DeepLabV3+ lite."""

from collections.abc import Callable

from torch import nn

from edgezoo.models.converted import (
    CONVERTED,
    CONVERTED_CLASSIFIERS,
    CONVERTED_SEGMENTERS,
    converted_builder,
)
from edgezoo.models.deeplabv3plus import (
    DeepLabV3Plus,
    SeparableASPP,
    deeplabv3plus_mobilenetv2,
    deeplabv3plus_resnet50,
    mobilenetv2_backbone,
    resnet_backbone,
)
from edgezoo.models.features import FeatureInfo, FeatureMaps, FeaturePlan, feature_maps
from edgezoo.models.mobilenetv2 import InvertedResidual, MobileNetV2, mobilenetv2
from edgezoo.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
    wide_resnet50_2,
    wide_resnet101_2,
)
from edgezoo.models.ssdlite import SSDLite, ssdlite_mobilenetv2_lite
from edgezoo.models.yolox import YOLOX, yolox_nano_lite

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "resnext50_32x4d": resnext50_32x4d,
    "resnext101_32x8d": resnext101_32x8d,
    "resnext101_64x4d": resnext101_64x4d,
    "wide_resnet50_2": wide_resnet50_2,
    "wide_resnet101_2": wide_resnet101_2,
    "mobilenetv2": mobilenetv2,
    "deeplabv3plus_mobilenetv2": deeplabv3plus_mobilenetv2,
    "deeplabv3plus_resnet50": deeplabv3plus_resnet50,
    "ssdlite_mobilenetv2_lite": ssdlite_mobilenetv2_lite,
    "yolox_nano_lite": yolox_nano_lite,
    **{name: converted_builder(name) for name in CONVERTED},
}
"""Canonical model name -> builder(num_classes=..., **kwargs); the registry adds aliases."""

__all__ = [
    "BUILDERS",
    "CONVERTED",
    "CONVERTED_CLASSIFIERS",
    "CONVERTED_SEGMENTERS",
    "YOLOX",
    "BasicBlock",
    "Bottleneck",
    "DeepLabV3Plus",
    "FeatureInfo",
    "FeatureMaps",
    "FeaturePlan",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet",
    "SSDLite",
    "SeparableASPP",
    "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_resnet50",
    "feature_maps",
    "mobilenetv2",
    "mobilenetv2_backbone",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet_backbone",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "ssdlite_mobilenetv2_lite",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "yolox_nano_lite",
]
