"""MulBlock: an element-wise product as a module, so quantization can give it its own range.

Squeeze-excitation gates (x * sigmoid(fc(pool(x)))) and per-channel scales multiply a feature
map by a tensor that broadcasts over height and width. TIDL's Mul takes two inputs and any
broadcast except on the batch axis (REFERENCE.md section 3); MulBlock refuses the rest.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from edgezoo.errors import UsageError

__all__ = ["MulBlock", "mul_broadcast_problem"]


def mul_broadcast_problem(a: Sequence[int], b: Sequence[int]) -> str | None:
    """Why TIDL cannot multiply tensors of shapes a and b, or None when it can: the same rank,
    the same batch size, every other axis equal or 1 in one of them."""
    if len(a) != len(b):
        return f"shapes {tuple(a)} and {tuple(b)} differ in rank"
    if a and a[0] != b[0]:
        return f"shapes {tuple(a)} and {tuple(b)} broadcast on the batch axis"
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b, strict=True)):
        return f"shapes {tuple(a)} and {tuple(b)} do not broadcast"
    return None


class MulBlock(nn.Module):
    """Multiply two tensors element-wise (the second may broadcast, e.g. a per-channel gate)."""

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        if len(inputs) != 2:
            raise UsageError(f"MulBlock multiplies two tensors (TIDL's Mul), got {len(inputs)}")
        a, b = inputs
        problem = mul_broadcast_problem(a.shape, b.shape)
        if problem is not None:
            raise UsageError(
                f"MulBlock cannot multiply these: {problem}; TIDL's Mul needs "
                "the same batch size and broadcasts only over the other axes"
            )
        return torch.mul(a, b)
