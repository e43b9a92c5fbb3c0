"""AddBlock: an element-wise sum as a module, so quantization can give it its own range."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from edgezoo.errors import UsageError


class AddBlock(nn.Module):
    """Sum a sequence of same-shaped tensors (residual adds) as one parameter-free module."""

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        if len(inputs) < 2:
            raise UsageError(f"AddBlock needs at least two tensors, got {len(inputs)}")
        out = inputs[0]
        for x in inputs[1:]:
            out = torch.add(out, x)
        return out
