"""Generate weights_manifest.json from torchvision's Weights enums: no URL or metric typed by hand.

Run `python tools/make_manifest.py` after a torchvision upgrade; `--check` exits non-zero when the
committed manifest differs from what the installed torchvision would produce.
"""

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.models import get_model_weights

from edgezoo.models.converted import AUX_HEAD_PREFIX, CONVERTED_CLASSIFIERS, CONVERTED_SEGMENTERS

MANIFEST_PATH = Path(__file__).resolve().parents[1] / "weights_manifest.json"
FORMAT_VERSION = 1
WEIGHTS_LICENSE = "BSD-3-Clause"  # torchvision's; weights under another licence name theirs
# A local build suffix such as "+cu130" says nothing about the weights and would make --check
# depend on which torch wheel is installed.
TORCHVISION_VERSION = torchvision.__version__.split("+", 1)[0]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class ClassifierSpec:
    """An edgezoo classification model whose weights come from one torchvision builder."""

    name: str
    torchvision_name: str
    head: str


@dataclass(frozen=True)
class SegmenterSpec:
    """An edgezoo segmentation model that only has published ImageNet weights for its backbone."""

    name: str
    backbone: str
    backbone_weights: str
    head: str
    description: str


CLASSIFIERS = [
    ClassifierSpec("resnet18", "resnet18", "fc"),
    ClassifierSpec("resnet34", "resnet34", "fc"),
    ClassifierSpec("resnet50", "resnet50", "fc"),
    ClassifierSpec("resnet101", "resnet101", "fc"),
    ClassifierSpec("resnet152", "resnet152", "fc"),
    ClassifierSpec("resnext50_32x4d", "resnext50_32x4d", "fc"),
    ClassifierSpec("resnext101_32x8d", "resnext101_32x8d", "fc"),
    ClassifierSpec("resnext101_64x4d", "resnext101_64x4d", "fc"),
    ClassifierSpec("wide_resnet50_2", "wide_resnet50_2", "fc"),
    ClassifierSpec("wide_resnet101_2", "wide_resnet101_2", "fc"),
    ClassifierSpec("mobilenetv2", "mobilenet_v2", "classifier.1"),
    # torchvision's own models, converted to module-only by edgezoo.make_module_only.
    *(ClassifierSpec(name, name, head) for name, head in CONVERTED_CLASSIFIERS.items()),
]

# torchvision's segmentation models, converted; their ImageNet backbone is torchvision's too.
TORCHVISION_BACKBONES = {"resnet50": "IMAGENET1K_V1", "resnet101": "IMAGENET1K_V1"}


@dataclass(frozen=True)
class DetectorSpec:
    """An edgezoo detector without published weights (ImageNet weights for its backbone where
    torchvision has them); its class head's weight gives its classes (an SSD's channels are
    head_priors x (classes + 1))."""

    name: str
    head: str
    head_weight: str
    description: str
    backbone: str | None = None
    backbone_weights: str | None = None


DETECTORS = [
    DetectorSpec(
        "ssdlite_mobilenetv2_lite",
        "class_heads",
        "class_heads.0.1.weight",
        "SSDLite (TIDL-friendly lite variant) on MobileNetV2; no published full weights",
        "mobilenetv2",
        "IMAGENET1K_V1",
    ),
    DetectorSpec(
        "yolox_nano_lite",
        "heads",
        "heads.0.cls_pred.weight",
        "YOLOX-nano lite (TI's TIDL-friendly variant); no published weights",
    ),
]

# torchvision's own segmentation models start from the IMAGENET1K_V1 backbones; we follow them.
SEGMENTERS = [
    SegmenterSpec(
        "deeplabv3plus_mobilenetv2",
        "mobilenetv2",
        "IMAGENET1K_V1",
        "predictor.1",
        "DeepLabV3+ lite (TI edgeai design) on MobileNetV2; no published full weights",
    ),
    SegmenterSpec(
        "deeplabv3plus_resnet50",
        "resnet50",
        "IMAGENET1K_V1",
        "predictor.1",
        "DeepLabV3+ lite (TI edgeai design) on ResNet50; no published full weights",
    ),
]


def _preprocessing(transforms) -> dict:
    """The fields of a torchvision preset that a user needs to reproduce its preprocessing
    (segmentation presets resize without a crop)."""
    crop = getattr(transforms, "crop_size", None)
    return {
        "mean": list(transforms.mean),
        "std": list(transforms.std),
        "resize": transforms.resize_size[0],
        "crop": crop[0] if crop else None,
        "interpolation": transforms.interpolation.value,
    }


def _input_size(weights) -> list[int]:
    """[C, H, W] that the weights are evaluated at: the crop, else the resize, of their preset."""
    prep = _preprocessing(weights.transforms())
    side = prep["crop"] or prep["resize"]
    return [3, side, side]


def _weights_entry(weights, num_params: int | None = None) -> dict:
    """One manifest weights record from one torchvision Weights enum member; num_params: the
    zoo model's, where it leaves some of the file's parameters out."""
    file_name = weights.url.rsplit("/", 1)[-1]
    dataset, metrics = next(iter(weights.meta["_metrics"].items()))
    return {
        "url": weights.url,
        "file_name": file_name,
        "sha256_prefix": file_name.rsplit("-", 1)[-1].split(".", 1)[0],
        "source": f"torchvision {TORCHVISION_VERSION} {type(weights).__name__}.{weights.name}",
        "recipe": weights.meta["recipe"],
        "license": weights.meta.get("license", WEIGHTS_LICENSE),
        "dataset": dataset,
        "metrics": dict(metrics),
        "num_params": num_params or weights.meta["num_params"],
        "file_size_mb": weights.meta["_file_size"],
        "preprocessing": _preprocessing(weights.transforms()),
    }


def _classifier_entry(spec: ClassifierSpec) -> dict:
    enum = get_model_weights(spec.torchvision_name)
    weights = {member.name: _weights_entry(member) for member in enum}
    return {
        "task": "classification",
        "torchvision_name": spec.torchvision_name,
        "num_classes": len(enum.DEFAULT.meta["categories"]),
        "num_params": enum.DEFAULT.meta["num_params"],
        "input_size": _input_size(enum.DEFAULT),
        "head": spec.head,
        "default_weights": enum.DEFAULT.name,
        "weights": weights,
    }


def _segmenter_entry(spec: SegmenterSpec) -> dict:
    # Imported here so that regenerating the classifier entries never depends on edgezoo itself.
    from edgezoo.models import BUILDERS
    from edgezoo.models.deeplabv3plus import DEFAULT_INPUT_SIZE

    input_size = [3, *DEFAULT_INPUT_SIZE]
    model = BUILDERS[spec.name]()
    head_weight = model.state_dict()[f"{spec.head}.weight"]
    return {
        "task": "segmentation",
        "description": spec.description,
        "num_classes": head_weight.shape[0],
        "num_params": sum(p.numel() for p in model.parameters()),
        "input_size": input_size,
        "head": spec.head,
        "default_weights": None,
        "weights": {},
        "pretrained_backbone": {"model": spec.backbone, "weights": spec.backbone_weights},
        "preprocessing": {
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "resize": input_size[1:],
            "crop": None,
            "interpolation": "bilinear",
        },
    }


def _detector_entry(spec: DetectorSpec) -> dict:
    from edgezoo.models import BUILDERS
    from edgezoo.models.ssdlite import DEFAULT_DETECTION_INPUT_SIZE

    input_size = [3, *DEFAULT_DETECTION_INPUT_SIZE]
    model = BUILDERS[spec.name]()
    boxes = getattr(model.meta_arch, "boxes", None)  # an SSD's priors share its class head
    priors = {"head_priors": boxes.priors_per_level[0]} if boxes is not None else {}
    channels = model.state_dict()[spec.head_weight].shape[0]
    entry = {
        "task": "detection",
        "description": spec.description,
        "num_classes": channels // priors["head_priors"] - 1 if priors else channels,
        "num_params": sum(p.numel() for p in model.parameters()),
        "input_size": input_size,
        "head": spec.head,
        "head_weight": spec.head_weight,
        **priors,
        "default_weights": None,
        "weights": {},
        "preprocessing": {
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "resize": input_size[1:],
            "crop": None,
            "interpolation": "bilinear",
        },
    }
    if spec.backbone is not None:
        entry["pretrained_backbone"] = {"model": spec.backbone, "weights": spec.backbone_weights}
    return entry


def _torchvision_segmenter_entry(name: str, head: str) -> dict:
    """A converted torchvision segmentation model: its published weights (without the
    auxiliary head the zoo model leaves out) and its torchvision ImageNet backbone."""
    from edgezoo.models import BUILDERS

    with torch.device("meta"):
        num_params = sum(p.numel() for p in BUILDERS[name]().parameters())
    enum = get_model_weights(name)
    backbone = name.rsplit("_", 1)[-1]
    return {
        "task": "segmentation",
        "torchvision_name": name,
        "num_classes": len(enum.DEFAULT.meta["categories"]),
        "num_params": num_params,
        "input_size": _input_size(enum.DEFAULT),
        "head": head,
        "default_weights": enum.DEFAULT.name,
        "weights": {member.name: _weights_entry(member, num_params) for member in enum},
        "pretrained_backbone": {"model": backbone, "weights": TORCHVISION_BACKBONES[backbone]},
        "unused_checkpoint_prefixes": [AUX_HEAD_PREFIX],
    }


def build_manifest() -> dict:
    """The whole manifest as a JSON-ready dict."""
    models = {spec.name: _classifier_entry(spec) for spec in CLASSIFIERS}
    models.update({spec.name: _segmenter_entry(spec) for spec in SEGMENTERS})
    models.update(
        {name: _torchvision_segmenter_entry(name, h) for name, h in CONVERTED_SEGMENTERS.items()}
    )
    models.update({spec.name: _detector_entry(spec) for spec in DETECTORS})
    return {
        "format_version": FORMAT_VERSION,
        "generated_by": f"tools/make_manifest.py from torchvision {TORCHVISION_VERSION}",
        "models": models,
    }


def to_json(manifest: dict) -> str:
    """Indented JSON with each list of numbers on one line, so the file reads like a table."""
    text = json.dumps(manifest, indent=2)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", _join_list, text) + "\n"


def _join_list(match: re.Match) -> str:
    return "[" + re.sub(r",\s+", ", ", match.group(1)) + "]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the manifest is stale")
    args = parser.parse_args()
    text = to_json(build_manifest())
    if args.check:
        if MANIFEST_PATH.read_text() != text:
            print(f"{MANIFEST_PATH} is stale: run python tools/make_manifest.py", file=sys.stderr)
            return 1
        print(f"{MANIFEST_PATH} is up to date")
        return 0
    MANIFEST_PATH.write_text(text)
    print(f"wrote {MANIFEST_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
