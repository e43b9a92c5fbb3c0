"""Model names and aliases, and get_model: edgezoo builders plus weights from the manifest."""

import copy
import difflib
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from edgezoo import hub
from edgezoo.errors import CheckpointMismatchError, UnknownModelError, WeightsError
from edgezoo.models import BUILDERS
from edgezoo.weights import LoadReport, load_weights, read_state_dict

logger = logging.getLogger(__name__)

# Extra spellings users meet elsewhere (torchvision's own names are added from the manifest).
_ALIASES = {
    "mnv2": "mobilenetv2",
    "deeplabv3plus_mobilenet_v2": "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_mnv2": "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_mobilenetv2_tv_edgeailite": "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_r50": "deeplabv3plus_resnet50",
}
_QAT_MODES = ("train", "calibrate", "test")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")


def list_models(task: str | None = None) -> list[str]:
    """Canonical model names in manifest order (by family, then size), optionally of one task."""
    if task is not None and task not in hub.TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(hub.TASKS)}")
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
    pretrained_backbone: bool | str = False,
    weights_url: str | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name, optionally with pretrained weights and wrapped for QAT.

    pretrained: True for the manifest's default tag, a tag such as "IMAGENET1K_V2", or a local
    path / file:// URL. num_classes: defaults to the checkpoint's; a different value loads all
    but the head and logs which keys were skipped. pretrained_backbone (segmentation models):
    True or a tag loads torchvision ImageNet weights into model.backbone. qat: False for the float
    model, True/"train", "calibrate" or "test" for the matching edgezoo.quantization wrapper.
    weights_url: a mirror to download from instead of the manifest's URL (default:
    $EDGEZOO_WEIGHTS_URL). Other kwargs go to the builder.
    """
    canonical = resolve_name(name)
    entry = _entry(canonical)
    qat_mode = _qat_mode(qat)
    if pretrained and pretrained_backbone:
        raise ValueError(
            "pass pretrained or pretrained_backbone, not both: full weights already hold a backbone"
        )
    state_dict, origin = None, ""
    if pretrained:
        state_dict, origin = _pretrained_state_dict(
            canonical, entry, pretrained, weights_url, progress
        )
        if num_classes is None:
            num_classes = _head_classes(state_dict, entry["head"])
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = BUILDERS[canonical](**kwargs)
    has_quant_state = False
    if state_dict is not None:
        has_quant_state = _load_full(
            canonical, model, state_dict, entry["head"], origin, qat_allowed=bool(qat_mode)
        )
    if pretrained_backbone:
        _load_backbone(model, canonical, entry, pretrained_backbone, weights_url, progress)
    if not qat_mode:
        return model
    from edgezoo.quantization import wrap_model

    example_input = torch.rand(1, *default_input_size(canonical))
    wrapped = wrap_model(model, qat_mode, example_input)
    if has_quant_state:
        _load_quant_state(wrapped, state_dict, entry["head"], origin)
    return wrapped


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


def _qat_mode(qat: bool | str) -> str | None:
    if qat is False:
        return None
    mode = "train" if qat is True else qat
    if mode not in _QAT_MODES:
        raise ValueError(f"qat must be False, True or one of {', '.join(_QAT_MODES)}; got {qat!r}")
    return mode


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


def _head_classes(state_dict: Mapping[str, torch.Tensor], head: str) -> int | None:
    """The number of classes the checkpoint's head produces, if it has one."""
    for key, tensor in state_dict.items():
        while key.startswith("module."):
            key = key.removeprefix("module.")
        if key == f"{head}.weight":
            return tensor.shape[0]
    return None


def _in_head(key: str, head: str) -> bool:
    return key.startswith(f"{head}.")


def _load_full(
    model_name: str,
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    head: str,
    origin: str,
    *,
    qat_allowed: bool,
) -> bool:
    """Load full-model weights; a head of another size is skipped with a warning.

    Returns whether the checkpoint holds keys the float model lacks, which only a QAT checkpoint
    may carry: they are loaded once the quantization wrapper has created them.
    """
    report = load_weights(model, state_dict, strict=False)
    skipped_head = [m for m in report.mismatched if _in_head(m.key, head)]
    fits = len(skipped_head) == len(report.mismatched) and not report.missing
    if not fits or (report.unexpected and not qat_allowed):
        # Only extra keys on an otherwise fitting model: most likely the ranges of a QAT model.
        hint = " or, for a QAT checkpoint, pass qat='test' or 'train'" if fits else ""
        raise CheckpointMismatchError(
            f"weights {origin} do not fit {type(model).__name__}: {report}. Use a checkpoint of "
            f"{model_name}{hint}"
        )
    if skipped_head:
        logger.warning(
            "%s: the head has another number of classes, so %s were skipped and keep their "
            "random initialisation; everything else was loaded",
            origin,
            ", ".join(map(str, skipped_head)),
        )
    else:
        logger.info("loaded %s", origin)
    return bool(report.unexpected)


def _load_quant_state(
    wrapped: nn.Module, state_dict: Mapping[str, torch.Tensor], head: str, origin: str
) -> None:
    """Load a QAT checkpoint again into the wrapper's module, which now has the range buffers."""
    target = getattr(wrapped, "module", wrapped)
    report = load_weights(target, state_dict, strict=False)
    mismatched = tuple(m for m in report.mismatched if not _in_head(m.key, head))
    if report.unexpected or mismatched:
        raise CheckpointMismatchError(
            f"weights {origin} hold keys that neither the float model nor its QAT wrapper have: "
            f"{LoadReport((), (), report.unexpected, mismatched)}"
        )


def _load_backbone(
    model: nn.Module,
    canonical: str,
    entry: Mapping[str, Any],
    pretrained_backbone: bool | str,
    weights_url: str | None,
    progress: bool,
) -> None:
    """Load ImageNet classifier weights into model.backbone; only classifier-only keys are left."""
    spec = entry.get("pretrained_backbone")
    if spec is None:
        raise ValueError(
            f"{canonical} has no backbone weights; pretrained_backbone is for "
            f"{', '.join(n for n in list_models() if 'pretrained_backbone' in _entry(n))}"
        )
    backbone_entry = _entry(spec["model"])
    tag = spec["weights"] if pretrained_backbone is True else str(pretrained_backbone).upper()
    if tag not in backbone_entry["weights"]:
        raise UnknownModelError(
            f"unknown backbone weights {pretrained_backbone!r} for {canonical}; tags of "
            f"{spec['model']}: {', '.join(backbone_entry['weights'])}"
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
