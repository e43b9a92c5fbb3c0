"""CatBlock: a channel concatenation as a module, so quantization can give it its own range."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from edgezoo.errors import UsageError


class CatBlock(nn.Module):
    """Concatenate a sequence of tensors along the channel axis (TIDL's safe Concat axis)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        if dim == 0:
            raise UsageError("CatBlock cannot concatenate on the batch axis: TIDL rejects it")
        self.dim = dim

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(inputs), dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
