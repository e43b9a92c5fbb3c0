"""Model names and aliases, and get_model: edgezoo builders plus weights from the manifest."""

import copy
import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgezoo import hub
from edgezoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from edgezoo.errors import CheckpointMismatchError, UnknownModelError, UsageError, WeightsError
from edgezoo.models import BUILDERS, feature_maps
from edgezoo.quantization import QuantizationConfig, wrap_model
from edgezoo.quantization.modes import wrapper_mode
from edgezoo.tasks import task_names
from edgezoo.weights import load_checkpoint_into, load_weights, read_state_dict

logger = logging.getLogger(__name__)

# Extra spellings users meet elsewhere (torchvision's own names are added from the manifest).
_ALIASES = {
    "mnv2": "mobilenetv2",
    "deeplabv3plus_mobilenet_v2": "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_mnv2": "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_mobilenetv2_tv_edgeailite": "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_r50": "deeplabv3plus_resnet50",
}
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")


def list_models(task: str | None = None) -> list[str]:
    """Canonical model names in manifest order (by family, then size), optionally of one task."""
    if task is not None and task not in task_names():
        raise UsageError(f"unknown task {task!r}; choose one of {', '.join(task_names())}")
    models = hub.load_manifest()["models"]
    return [name for name, entry in models.items() if task in (None, entry["task"])]


def resolve_name(name: str) -> str:
    """The canonical name of a model name or alias; UnknownModelError names close matches."""
    table = _name_table()
    key = _normalise(name)
    if key in table:
        return table[key]
    matches = difflib.get_close_matches(key, table, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(matches)}? " if matches else ""
    raise UnknownModelError(
        f"unknown model {name!r}; {hint}known models: {', '.join(list_models())}"
    )


def model_info(name: str) -> dict[str, Any]:
    """The manifest entry of a model, with its canonical name and aliases."""
    canonical = resolve_name(name)
    info = copy.deepcopy(_entry(canonical))
    return {"name": canonical, "aliases": aliases_of(canonical), **info}


def aliases_of(name: str) -> list[str]:
    """Every other spelling that resolves to this model."""
    canonical = resolve_name(name)
    return sorted(k for k, v in _name_table().items() if v == canonical and k != canonical)


def preprocessing(name: str) -> tuple[Sequence[float], Sequence[float]]:
    """The (mean, std) normalisation of a model's default weights (of its backbone's for models
    without weights of their own); ImageNet's when the manifest names none."""
    info = model_info(name)
    if not info["weights"] and info.get("pretrained_backbone"):
        info = model_info(info["pretrained_backbone"]["model"])
    if info["weights"]:
        prep = info["weights"][info["default_weights"]].get("preprocessing", {})
        return tuple(prep.get("mean", IMAGENET_MEAN)), tuple(prep.get("std", IMAGENET_STD))
    return IMAGENET_MEAN, IMAGENET_STD


def default_input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input the model's weights and preprocessing are meant for."""
    channels, height, width = _entry(resolve_name(name))["input_size"]
    return channels, height, width


def get_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int | None = None,
    qat: bool | str = False,
    *,
    pretrained_backbone: bool | str | os.PathLike = False,
    weights_url: str | None = None,
    progress: bool = True,
    example_input: torch.Tensor | None = None,
    config: QuantizationConfig | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name, load its weights, and (with qat) wrap it for quantization.

    pretrained: True (the manifest's default tag), a tag ("IMAGENET1K_V2"), or a path / file://
    URL of a float or QAT checkpoint. num_classes: default the checkpoint's; another value loads
    all but the head. pretrained_backbone (segmentation, detection): True or a tag loads ImageNet
    weights into model.backbone, a path a checkpoint of the backbone's classifier. qat: False
    (float), True/"train", "calibrate" or "test": the wrapper wrap_model builds with `config`,
    traced with example_input (default: a random batch at the model's input size). weights_url:
    a mirror (default $EDGEZOO_WEIGHTS_URL). features_only: the backbone's feature maps at
    `out_indices` (FeatureMaps). kwargs go to the builder.
    """
    if features_only:
        options = {"pretrained": pretrained, "pretrained_backbone": pretrained_backbone, **kwargs}
        options.update(num_classes=num_classes, weights_url=weights_url, progress=progress)
        return _feature_model(name, out_indices, qat, example_input, config, **options)
    if out_indices is not None:
        raise UsageError("out_indices picks feature maps: pass features_only=True with it")
    canonical = resolve_name(name)
    entry = _entry(canonical)
    mode = wrapper_mode(qat)
    _check_one_weight_source(pretrained, pretrained_backbone)
    state_dict, origin = None, ""
    if pretrained:
        state_dict, origin = _pretrained_state_dict(
            canonical, entry, pretrained, weights_url, progress
        )
        num_classes = _head_classes(state_dict, entry) if num_classes is None else num_classes
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = BUILDERS[canonical](**kwargs)
    if pretrained_backbone:
        _load_backbone(model, canonical, entry, pretrained_backbone, weights_url, progress)
    example_input = _example(canonical) if example_input is None else example_input
    if state_dict is None:
        return model if mode is None else wrap_model(model, mode, example_input, config=config)
    state_dict = _without_unused_keys(state_dict, model, entry)
    logger.info("loading %s", origin)
    return load_checkpoint_into(
        model, state_dict, mode=mode, example_input=example_input, origin=origin,
        model_name=canonical, head=entry["head"], config=config,
    )  # fmt: skip


def _feature_model(
    name: str,
    out_indices: Sequence[int] | None,
    qat: bool | str,
    example_input: torch.Tensor | None,
    config: QuantizationConfig | None,
    **float_options: Any,
) -> nn.Module:
    """get_model(..., features_only=True): the float classifier cut to its feature maps, then
    wrapped for quantization when asked."""
    maps = feature_maps(get_model(name, **float_options), out_indices)
    mode = wrapper_mode(qat)
    if mode is None:
        return maps
    example = example_input if example_input is not None else _example(resolve_name(name))
    return wrap_model(maps, mode, example, config=config)


def _check_one_weight_source(pretrained: object, pretrained_backbone: object) -> None:
    if pretrained and pretrained_backbone:
        raise UsageError(
            "pass pretrained or pretrained_backbone, not both: full weights already hold a backbone"
        )


def _example(canonical: str) -> torch.Tensor:
    """A random batch of one at the model's default input size, for tracing it."""
    return torch.rand(1, *default_input_size(canonical))


def _entry(canonical: str) -> dict[str, Any]:
    return hub.load_manifest()["models"][canonical]


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace("+", "plus")


def _name_table() -> dict[str, str]:
    """Every accepted spelling (normalised) -> canonical name."""
    models = hub.load_manifest()["models"]
    table = {alias: name for alias, name in _ALIASES.items() if name in models}
    for name, entry in models.items():
        if "torchvision_name" in entry:
            table[entry["torchvision_name"]] = name
        table[name] = name
    return table


def _without_unused_keys(
    state_dict: dict[str, torch.Tensor], model: nn.Module, entry: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The checkpoint less the keys the manifest says the zoo model leaves out (torchvision's
    auxiliary segmentation head) when the model was built without them."""
    prefixes = tuple(entry.get("unused_checkpoint_prefixes", ()))
    if not prefixes or any(key.startswith(prefixes) for key in model.state_dict()):
        return state_dict
    left_out = [key for key in state_dict if key.startswith(prefixes)]
    if left_out:
        logger.info(
            "left out %d checkpoint entries the model does not use: %s",
            len(left_out),
            ", ".join(prefixes),
        )
    return {key: value for key, value in state_dict.items() if not key.startswith(prefixes)}


def _pretrained_state_dict(
    canonical: str,
    entry: Mapping[str, Any],
    pretrained: bool | str | os.PathLike,
    weights_url: str | None,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], str]:
    """The state_dict that `pretrained` names and a description of where it came from."""
    if isinstance(pretrained, str | os.PathLike) and not _is_tag(pretrained, entry):
        if not _looks_like_path(pretrained):
            tags = ", ".join(entry["weights"]) or "none published"
            raise UnknownModelError(
                f"pretrained={os.fspath(pretrained)!r} is neither a weights tag of {canonical} "
                f"(tags: {tags}; or True / 'DEFAULT') nor a file path or file:// URL"
            )
        return read_state_dict(pretrained), os.fspath(pretrained)
    if not entry["weights"]:
        backbone = entry.get("pretrained_backbone")
        hint = (
            f"use pretrained_backbone=True for {backbone['model']} {backbone['weights']} "
            "ImageNet weights in the backbone, or "
            if backbone
            else ""
        )
        raise WeightsError(
            f"{canonical} has no published weights; {hint}pass pretrained=PATH to your checkpoint"
        )
    tag = _tag(pretrained, entry)
    path = hub.fetch_weights(entry["weights"][tag], base_url=weights_url, progress=progress)
    return read_state_dict(path), f"{canonical} {tag} ({path})"


def _is_tag(value: str | os.PathLike, entry: Mapping[str, Any]) -> bool:
    text = os.fspath(value).upper()
    return text == "DEFAULT" or text in entry["weights"]


def _looks_like_path(value: str | os.PathLike) -> bool:
    text = os.fspath(value)
    return (
        isinstance(value, os.PathLike)
        or "/" in text
        or os.sep in text
        or text.endswith(_CHECKPOINT_SUFFIXES)
        or hub.is_local_source(text)
    )


def _tag(pretrained: bool | str, entry: Mapping[str, Any]) -> str:
    text = "DEFAULT" if pretrained is True else str(pretrained).upper()
    return entry["default_weights"] if text == "DEFAULT" else text


def checkpoint_classes(name: str, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes a checkpoint of model `name` was trained for, if it has a head."""
    return _head_classes(state_dict, _entry(resolve_name(name)))


def _head_classes(state_dict: Mapping[str, torch.Tensor], entry: Mapping[str, Any]) -> int | None:
    """The number of classes the checkpoint's head produces, if it has one (a detector's class
    head: head_priors x (classes + 1) channels)."""
    wanted = entry.get("head_weight", f"{entry['head']}.weight")
    for key, tensor in state_dict.items():
        while key.startswith("module."):
            key = key.removeprefix("module.")
        if key == wanted:
            priors = entry.get("head_priors")
            return tensor.shape[0] if priors is None else tensor.shape[0] // priors - 1
    return None


def _load_backbone(
    model: nn.Module,
    canonical: str,
    entry: Mapping[str, Any],
    pretrained_backbone: bool | str | os.PathLike,
    weights_url: str | None,
    progress: bool,
) -> None:
    """Load ImageNet classifier weights (a tag) or a classifier checkpoint (a path) into
    model.backbone; only classifier-only keys are left out."""
    spec = entry.get("pretrained_backbone")
    if spec is None:
        raise UsageError(
            f"{canonical} has no backbone weights; pretrained_backbone is for "
            f"{', '.join(n for n in list_models() if 'pretrained_backbone' in _entry(n))}"
        )
    backbone_entry = _entry(spec["model"])
    if isinstance(pretrained_backbone, str | os.PathLike) and _looks_like_path(pretrained_backbone):
        path, tag = pretrained_backbone, os.fspath(pretrained_backbone)
    else:
        tag = spec["weights"] if pretrained_backbone is True else str(pretrained_backbone).upper()
        if tag not in backbone_entry["weights"]:
            raise UnknownModelError(
                f"unknown backbone weights {pretrained_backbone!r} for {canonical}; tags of "
                f"{spec['model']}: {', '.join(backbone_entry['weights'])}, or a path to a "
                f"{spec['model']} checkpoint"
            )
        record = backbone_entry["weights"][tag]
        path = hub.fetch_weights(record, base_url=weights_url, progress=progress)
    backbone = model.get_submodule("backbone")
    # The backbone declares which classifier-only keys of the checkpoint it leaves out.
    unused = getattr(backbone, "unused_checkpoint_prefixes", (f"{backbone_entry['head']}.",))
    report = load_weights(backbone, path, strict=False)
    stray = [key for key in report.unexpected if not key.startswith(tuple(unused))]
    if report.missing or report.mismatched or stray:
        raise CheckpointMismatchError(
            f"{spec['model']} {tag} weights do not fit the backbone of {canonical}: {report}"
        )
    logger.info("loaded %s %s into %s.backbone (%s)", spec["model"], tag, canonical, path)
