"""SelfGate: x * gate(x) with the gate and the product as modules of their own.

SiLU (x * sigmoid(x)) and Hardswish (x * hardsigmoid(x)) are not TIDL operators; exported at
TIDL's opsets they become a Sigmoid or HardSigmoid and a Mul anyway. Written as two modules,
quantization gives the gate and the product a range each, which the graph then carries as Clips.
"""

from torch import Tensor, nn

from edgezoo.layers.mul_block import MulBlock

__all__ = ["SELF_GATED", "SelfGate"]

SELF_GATED: dict[type[nn.Module], type[nn.Module]] = {
    nn.SiLU: nn.Sigmoid,
    nn.Hardswish: nn.Hardsigmoid,
}
"""Activation module -> the gate it multiplies its input by."""


class SelfGate(nn.Module):
    """x * gate(x) (SiLU with an nn.Sigmoid gate, Hardswish with an nn.Hardsigmoid one)."""

    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.gate = gate
        self.mul = MulBlock()

    @classmethod
    def replacing(cls, activation: nn.Module) -> "SelfGate":
        """The SelfGate that computes what `activation` (an nn.SiLU or nn.Hardswish) does."""
        return cls(SELF_GATED[type(activation)]())

    def forward(self, x: Tensor) -> Tensor:
        return self.mul([x, self.gate(x)])
