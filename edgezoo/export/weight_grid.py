"""TIDL's per-tensor power-of-two weight re-quantization, and keeping QAT weights fixed under it.

A QAT export writes each Conv weight as float values that already lie on the power-of-two grid
the QAT forward used (k / scale, k an 8-bit integer). TIDL re-quantizes every weight tensor on
import with scale = 2^(b-1) / ceil2(max|w|); for grid weights that is the same scale and the same
integers, so the network TIDL runs is the one QAT trained. Writing the integers with their scale
(QDQ) would need QuantizeLinear/DequantizeLinear nodes, which the Clip-range flow (TI's QAT v1,
calibrationOption 64) does not use.

One case breaks the identity: when the largest magnitude on the grid is exactly half the QAT
clip (k = +2^(b-2), +64 at 8 bits, from max|w| * scale just above it), TIDL's ceil2 sees a
power of two, doubles the scale, and clamps 2 * 64 = 128 to 127. Nudging those entries up to
the next float (one unit in the last place: a relative 2^-23 in float32, under 1/500 of a step
even at 16 bits) makes TIDL pick the QAT scale again and round them back, while the float graph
moves by far less than the export's parity tolerance.
"""

import numpy as np
import torch

from edgezoo.quantization.grid import ceil2, weight_integers, weight_scale

__all__ = [
    "GRID_TOLERANCE_STEPS",
    "align_to_tidl_grid",
    "ceil2",
    "grid_error_steps",
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


def align_to_tidl_grid(weight: np.ndarray, bitwidth: int = 8) -> tuple[np.ndarray, int]:
    """Return weights whose TIDL re-quantization equals `weight`, and how many entries moved.

    Grid weights come back unchanged (0 moved), except in the power-of-two-maximum case
    described in the module docstring, whose positive maximum entries are nudged. Weights that
    no nudge can fix (float weights, per-channel grids) come back unchanged as well; the
    caller's grid check reports them.
    """
    if np.array_equal(tidl_requantize(weight, bitwidth), weight):
        return weight, 0
    peak = float(np.abs(weight).max())
    at_peak = weight == peak
    if peak == 0.0 or ceil2(peak) != peak or not at_peak.any():
        return weight, 0
    nudged = weight.copy()
    nudged[at_peak] = np.nextafter(weight.dtype.type(peak), weight.dtype.type(np.inf))
    if not np.array_equal(tidl_requantize(nudged, bitwidth), weight):
        return weight, 0
    return nudged, int(at_peak.sum())
