"""TIDL's per-tensor power-of-two weight re-quantization, and keeping QAT weights fixed under it.

A QAT export writes each Conv weight as float values that already lie on the power-of-two grid
the QAT forward used (k / scale, k an 8-bit integer). TIDL re-quantizes every weight tensor on
import with scale = 2^(b-1) / ceil2(max|w|); for grid weights that is the same scale and the same
integers, so the network TIDL runs is the one QAT trained. Writing the integers with their scale
(QDQ) would need QuantizeLinear/DequantizeLinear nodes, which the Clip-range flow (TI's QAT v1,
calibrationOption 64) does not use.

One case breaks the identity: when the largest magnitude on the grid is exactly half the QAT
clip (k = +/-2^(b-2), +/-64 at 8 bits), TIDL's ceil2 sees a power of two and doubles the scale:
a positive peak clamps (2 * 64 = 128 -> 127), a negative one keeps its value but halves the
accumulator grid and with it the bias grid and its limit. Deploy conversion, which knows the QAT
scale, nudges those entries one unit in the last place away from zero
(grid.keep_scale_on_import); here is what the export and its tests need to see it.
"""

import numpy as np
import torch

from edgezoo.quantization.grid import (
    ceil2,
    keep_scale_on_import,
    weight_integers,
    weight_scale,
)

__all__ = [
    "GRID_TOLERANCE_STEPS",
    "align_to_tidl_grid",
    "ceil2",
    "grid_error_steps",
    "nudged_entries",
    "tidl_requantize",
    "tidl_weight_scale",
]

GRID_TOLERANCE_STEPS = 2.0**-8
"""Largest distance from TIDL's grid, in quantization steps, that still counts as on the grid."""


def tidl_weight_scale(weight: np.ndarray, bitwidth: int = 8) -> float:
    """TIDL's per-tensor weight scale: 2^(b-1) / ceil2(max|w|) (edgezoo's grid rule)."""
    return float(weight_scale(torch.tensor(weight), bitwidth))


def tidl_requantize(weight: np.ndarray, bitwidth: int = 8) -> np.ndarray:
    """The weights TIDL runs: round half away from zero at its scale, clamp, rescale."""
    tensor = torch.tensor(weight)
    scale = weight_scale(tensor, bitwidth).to(tensor.dtype)
    return (weight_integers(tensor, scale, bitwidth) / scale).numpy()


def grid_error_steps(weight: np.ndarray, bitwidth: int = 8) -> float:
    """How far TIDL's re-quantization moves the weights, in quantization steps (0 = on grid)."""
    if weight.size == 0:
        return 0.0
    moved = np.abs(tidl_requantize(weight, bitwidth).astype(np.float64) - weight)
    return float(moved.max() * tidl_weight_scale(weight, bitwidth))


def align_to_tidl_grid(
    weight: np.ndarray, scale: float, bitwidth: int = 8
) -> tuple[np.ndarray, int]:
    """Grid weights at `scale` whose TIDL re-quantization gives the same integers at that same
    scale (grid.keep_scale_on_import), and how many entries moved; unchanged when none had to
    (the same array)."""
    kept = keep_scale_on_import(torch.from_numpy(weight), scale, bitwidth)
    moved = int((kept.numpy() != weight).sum())
    return (kept.numpy(), moved) if moved else (weight, 0)


def nudged_entries(values: np.ndarray, bitwidth: int = 8) -> int:
    """How many entries lie off TIDL's grid by a nudge (within GRID_TOLERANCE_STEPS, not 0)."""
    if values.size == 0:
        return 0
    return int((tidl_requantize(values, bitwidth) != values).sum())
