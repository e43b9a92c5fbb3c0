"""select_16bit_layers: which layers to run in 16 bits, chosen from measured sensitivity.

Each conv/linear layer is tried alone at 16 bits (its weights and its output, as
QuantizationConfig(layer_bits={name: 16}) makes it): the model is calibrated with that one
layer widened and its output SQNR against the float model is measured on the same few batches.
The gain over the all-8-bit model ranks the layers; the set that fits the budget (a share of
the model's multiply-accumulates run at 16 bits) is picked greedily by gain per MAC, and its
SQNR is measured once more as a whole (gains need not add up).
"""

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from edgezoo.errors import UsageError
from edgezoo.module_state import kept_modes
from edgezoo.quantization.config import QuantizationConfig
from edgezoo.quantization.wrappers import QuantCalibrateModule

__all__ = ["MixedPrecisionChoice", "layer_macs", "select_16bit_layers"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixedPrecisionChoice:
    """The chosen 16-bit layers with what was measured (SQNRs in dB against the float model).

    layer_bits: {name: 16} for QuantizationConfig(layer_bits=...) / --layer-bits.
    gains_db: every candidate's SQNR gain when it alone is 16-bit. macs_share: each layer's
    share of the model's MACs. budget / used: the MAC share allowed / chosen.
    """

    layer_bits: dict[str, int]
    gains_db: dict[str, float]
    macs_share: dict[str, float]
    budget: float
    used: float
    sqnr_8bit_db: float
    sqnr_selected_db: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def within(self, budget: float) -> dict[str, int]:
        """The layers this measurement chooses for another budget (no new measurement)."""
        return {name: 16 for name in _fit_budget(self.gains_db, self.macs_share, budget)}


def layer_macs(model: nn.Module, example: Tensor) -> dict[str, int]:
    """Multiply-accumulates per image of every Conv2d / Linear leaf, from one forward."""
    macs: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            handles.append(module.register_forward_hook(_count_into(macs, name)))
    try:
        with kept_modes(model), torch.no_grad():
            model.eval()(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return macs


def _count_into(macs: dict[str, int], name: str):
    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        per_output = module.weight[0].numel()  # in_channels / groups x kernel area
        macs[name] = int(output[:1].numel() * per_output)

    return hook


def select_16bit_layers(
    model: nn.Module,
    data: Iterable[Any],
    budget: float = 0.1,
    batches: int = 4,
    config: QuantizationConfig | None = None,
    progress: bool = True,
) -> MixedPrecisionChoice:
    """Choose the layers of a float `model` to run in 16 bits within `budget` (a share of its
    MACs in [0, 1]), from each layer's measured output-SQNR gain on `batches` batches of
    `data` (tensors, or (images, targets) pairs). config: the quantization scheme (its
    per-layer rules are replaced). The model is not changed."""
    if not 0.0 <= budget <= 1.0:
        raise UsageError(f"budget is a share of the model's MACs in [0, 1], got {budget!r}")
    started = time.perf_counter()
    images = [_images(batch) for batch in islice(data, batches)]
    if not images:
        raise UsageError("select_16bit_layers needs at least one batch of data")
    base = dataclasses.replace(config or QuantizationConfig(), layer_bits=None, layer_rules=())
    with kept_modes(model), torch.no_grad():
        reference = [_tensor(model.eval()(x)) for x in images]
    macs = layer_macs(model, images[0])
    total = sum(macs.values())
    share = {name: count / total for name, count in macs.items()}
    sqnr_8bit = _calibrated_sqnr(model, base, images, reference)
    gains = {}
    for name in tqdm(list(macs), desc="16-bit sensitivity", disable=not progress):
        widened = dataclasses.replace(base, layer_bits={name: 16})
        gains[name] = _calibrated_sqnr(model, widened, images, reference) - sqnr_8bit
    layer_bits = {name: 16 for name in _fit_budget(gains, share, budget)}
    selected = sqnr_8bit
    if layer_bits:
        widened = dataclasses.replace(base, layer_bits=layer_bits)
        selected = _calibrated_sqnr(model, widened, images, reference)
    used = sum(share[name] for name in layer_bits)
    seconds = time.perf_counter() - started
    logger.info("%d 16-bit layers (%.1f%% of MACs) in %.1f s", len(layer_bits), used * 100, seconds)
    return MixedPrecisionChoice(
        layer_bits, gains, share, budget, used, sqnr_8bit, selected, seconds
    )


def _fit_budget(gains: dict[str, float], share: dict[str, float], budget: float) -> list[str]:
    """Greedy by gain per MAC share: the layers with a positive gain that fit the budget."""
    ranked = sorted(gains, key=lambda n: gains[n] / max(share[n], 1e-12), reverse=True)
    chosen, used = [], 0.0
    for name in ranked:
        if gains[name] > 0 and used + share[name] <= budget + 1e-12:
            chosen.append(name)
            used += share[name]
    return chosen


def _calibrated_sqnr(
    model: nn.Module, config: QuantizationConfig, images: list[Tensor], reference: list[Any]
) -> float:
    """The output SQNR (dB) of `model` calibrated under `config` on `images`."""
    q = QuantCalibrateModule(copy.deepcopy(model), images[0][:1], config=config)
    q.train()
    for x in images:
        q(x)
    q.eval()
    signal = noise = 0.0
    with torch.no_grad():
        for x, expected in zip(images, reference, strict=True):
            out = _tensor(q(x))
            signal += float(expected.double().square().sum())
            noise += float((out.double() - expected.double()).square().sum())
    return math.inf if noise == 0 else 10.0 * math.log10(signal / noise)


def _tensor(output: Any) -> Tensor:
    """A model's output as one (N, values) tensor: its one tensor, or its several (a
    detector's heads, a dict or tuple of tensors) side by side, so one SQNR covers them all."""
    if isinstance(output, Tensor):
        return output
    parts = list(output.values()) if isinstance(output, dict) else output
    if not isinstance(parts, list | tuple) or not all(isinstance(p, Tensor) for p in parts):
        raise UsageError(
            "select_16bit_layers measures the SQNR of the model's output tensors; this model "
            f"returns {type(output).__name__}: wrap it to return a tensor or a dict of tensors"
        )
    return torch.cat([part.flatten(1) for part in parts], dim=1)


def _images(batch: Any) -> Tensor:
    """The image tensor of a batch (a tensor, or the first item of a tuple/list)."""
    images = batch[0] if isinstance(batch, tuple | list) else batch
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise UsageError("select_16bit_layers reads NCHW image batches (or (images, targets))")
    return images
