"""Build the model a run needs: float or wrapped for QAT / calibration / test, from pretrained
weights or a run's checkpoint, with the normalisation its weights expect."""

import logging
import os

import torch
from torch import nn

from edgezoo import hub
from edgezoo.engine.rng import seed_everything
from edgezoo.quantization import QuantizationConfig, wrap_model
from edgezoo.quantization.modes import FLOAT_RUN, RUN_WRAPPER_MODES
from edgezoo.registry import get_model, model_info
from edgezoo.weights import load_checkpoint_into, read_state_dict

logger = logging.getLogger(__name__)


def model_task(name: str) -> str:
    """The task of a model: "classification" or "segmentation"."""
    return model_info(name)["task"]


def cached_pretrained(name: str) -> str | None:
    """What pretrained weights are already in the torch.hub cache, without downloading:
    "full" (the model's default weights), "backbone" (ImageNet weights of its backbone) or None."""
    info = model_info(name)
    if info["weights"]:
        record = info["weights"][info["default_weights"]]
        if (hub.cache_dir() / record["file_name"]).is_file():
            return "full"
    spec = info.get("pretrained_backbone")  # torchvision's segmentation models have both
    if spec:
        record = model_info(spec["model"])["weights"][spec["weights"]]
        return "backbone" if (hub.cache_dir() / record["file_name"]).is_file() else None
    return None


def is_quantized_state(name: str, state_dict: dict[str, torch.Tensor], num_classes: int) -> bool:
    """Whether a state_dict carries QAT / calibration range buffers beyond the float model's."""
    float_keys = get_model(name, num_classes=num_classes).state_dict().keys()
    return any(key.removeprefix("module.") not in float_keys for key in state_dict)


def build_model(
    name: str,
    num_classes: int,
    input_size: int,
    *,
    mode: str = FLOAT_RUN,
    pretrained: bool | str = False,
    pretrained_backbone: bool | str = False,
    checkpoint: str | os.PathLike | None = None,
    seed: int | None = None,
    config: QuantizationConfig | None = None,
) -> nn.Module:
    """The model of a run.

    mode: "float", or "qat" / "calibrate" / "test" for the edgezoo.quantization wrapper.
    pretrained / pretrained_backbone: manifest weights (a head of another size is re-initialised).
    checkpoint: a run's last.pth / best.pth or any state_dict of this model; it must fit exactly
    (CheckpointMismatchError names the keys that do not). A checkpoint holding range buffers
    (a QAT or calibrated run) needs a quantized mode and restores those ranges too.
    seed: seed every generator first, so random initialisation (a re-initialised head too)
    repeats exactly. config: how a quantized mode quantizes (default QuantizationConfig()).
    """
    if seed is not None:
        seed_everything(seed)
    wrapper = None if mode == FLOAT_RUN else RUN_WRAPPER_MODES[mode]
    example = torch.rand(1, 3, input_size, input_size)
    if checkpoint is None:
        model = get_model(
            name,
            pretrained=pretrained,
            pretrained_backbone=pretrained_backbone,
            num_classes=num_classes,
        )
        return model if wrapper is None else wrap_model(model, wrapper, example, config=config)
    model = get_model(name, num_classes=num_classes)
    loaded = load_checkpoint_into(
        model,
        read_state_dict(checkpoint),
        mode=wrapper,
        example_input=example,
        origin=str(checkpoint),
        model_name=name,
        config=config,
    )
    logger.info("loaded %s", checkpoint)
    return loaded
