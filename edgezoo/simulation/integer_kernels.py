"""Exact integer convolutions and matrix products at float32 speed.

float32 holds every integer up to 2^24 exactly. When the sum of the absolute values of the
products that make one output is at most 2^23, every partial sum along the way is an integer of
at most that size, so a float32 convolution computes the exact result whatever order its kernel
adds in (2^23 rather than 2^24 leaves room for the requantization's exact + 1/2). At 8 bits
that bound usually holds for a whole layer (255 x 128 per product); where it does not, the
input channels are split into groups that each keep it, and the groups' exact float32 results
are added in float64 (exact below 2^53). A layer whose single input channel breaks it (16-bit
tensors) runs in float64, which is exact for b-bit integers up to 16 bits. Results come back in
float32 when every sum, the bias included, stays within the bound, else in float64.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from edgezoo.quantization.exact import exact_conv2d

__all__ = ["EXACT_FLOAT32_SUM", "IntegerWeights", "integer_conv2d", "integer_linear"]

EXACT_FLOAT32_SUM = float(2**23)
"""Largest magnitude of an integer the simulation keeps in float32: every partial sum below it
is exact, and so is its rounding shift floor(n / 2^s + 1/2)."""


@dataclass(frozen=True)
class IntegerWeights:
    """A layer's integer weights, prepared once: float64 and float32 copies, the sum of |w|
    each output draws from each input channel, and the channel chunks found for each input
    bound."""

    exact: Tensor
    fast: Tensor
    l1: Tensor
    _chunks: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, integers: Tensor) -> "IntegerWeights":
        l1 = integers.abs().flatten(2).sum(dim=2) if integers.dim() > 2 else integers.abs()
        return cls(integers.double(), integers.float(), l1.double())

    def bound(self, peak: float) -> float:
        """The largest sum of |products| of one output, for inputs up to |peak|."""
        return float(self.l1.sum(dim=1).amax()) * peak

    def chunks(self, peak: float, groups: int) -> list[tuple[int, int, Tensor]] | None:
        """(first, end, contiguous float32 weights) of input-channel ranges whose float32
        products sum exactly for inputs up to |peak|; None where even one channel cannot (a
        grouped convolution is taken whole or not)."""
        key = (peak, groups)
        if key not in self._chunks:
            ranges = _channel_chunks(self.l1 * peak, groups)
            self._chunks[key] = ranges and [
                (start, stop, self.fast[:, start:stop].contiguous()) for start, stop in ranges
            ]
        return self._chunks[key]


def integer_conv2d(
    x: Tensor,
    weights: IntegerWeights,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    peak: float,
) -> Tensor:
    """F.conv2d of integer-valued x (|x| <= peak) and weights plus an integer bias, exactly:
    float32 when every sum fits in its mantissa, else float64."""
    options = (stride, padding, dilation, groups)

    def conv(x_part: Tensor, w_part: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x_part, w_part, b, *options)

    def exact() -> Tensor:
        return exact_conv2d(x, weights.exact, bias, *options)

    return _integer_product(conv, exact, x, weights, bias, peak, groups)


def integer_linear(x: Tensor, weights: IntegerWeights, bias: Tensor | None, peak: float) -> Tensor:
    """F.linear of integer-valued x (|x| <= peak) and weights plus an integer bias, exactly:
    float32 when every sum fits in its mantissa, else float64."""

    def exact() -> Tensor:
        return F.linear(x.double(), weights.exact, None if bias is None else bias.double())

    return _integer_product(F.linear, exact, x, weights, bias, peak, 1)


def _integer_product(op, exact, x, weights, bias, peak: float, groups: int) -> Tensor:
    """op (a conv or linear of (x, w, bias)) in float32 over channel chunks whose sums stay
    exact, the chunks added in float64; exact() where no chunking is exact."""
    chunks = weights.chunks(peak, groups)
    if chunks is None:
        return exact()
    bias_peak = float(bias.abs().amax()) if bias is not None and bias.numel() else 0.0
    x32 = x.float()
    if len(chunks) == 1 and weights.bound(peak) + bias_peak <= EXACT_FLOAT32_SUM:
        return op(x32, weights.fast, None if bias is None else bias.float())
    out = None
    for start, stop, weight in chunks:
        part = op(x32[:, start:stop], weight, None)
        out = part.double() if out is None else out.add_(part)
    if bias is None:
        return out
    return out.add_(bias.double().reshape((1, -1) + (1,) * (out.dim() - 2)))


def _channel_chunks(bounds: Tensor, groups: int) -> list[tuple[int, int]] | None:
    """Greedy consecutive input-channel ranges within which every output's bound (bounds:
    outputs x input channels of a group) sums to at most EXACT_FLOAT32_SUM."""
    if groups > 1:
        whole = float(bounds.sum(dim=1).amax()) <= EXACT_FLOAT32_SUM
        return [(0, bounds.shape[1] * groups)] if whole else None
    if float(bounds.amax()) > EXACT_FLOAT32_SUM:
        return None
    chunks, start, running = [], 0, torch.zeros_like(bounds[:, 0])
    for index in range(bounds.shape[1]):
        running += bounds[:, index]
        if float(running.amax()) > EXACT_FLOAT32_SUM:
            chunks.append((start, index))
            start, running = index, bounds[:, index].clone()
    chunks.append((start, bounds.shape[1]))
    return chunks
