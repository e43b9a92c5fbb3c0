"""Clip: the deploy-time form of an activation range, exported as one ONNX Clip node."""

import torch
from torch import Tensor, nn

from edgezoo.errors import UsageError


class Clip(nn.Module):
    """Clamp to constant float bounds; the TorchScript ONNX exporter writes it as Clip(min, max)."""

    def __init__(self, min_val: float, max_val: float, bitwidth: int = 8) -> None:
        super().__init__()
        if not min_val < max_val:
            raise UsageError(f"Clip needs min_val < max_val, got ({min_val}, {max_val})")
        self.min_val = float(min_val)
        self.max_val = float(max_val)
        # The width of the grid the device puts the range on (the export records it).
        self.bitwidth = bitwidth

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}, bitwidth={self.bitwidth}"
