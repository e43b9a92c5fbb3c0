"""QuantizedLayer: a parameter-free layer (add, concat, pool, ...) with its activation ranges."""

from typing import Any

from torch import Tensor, nn

from edgezoo.errors import QuantizationConfigError
from edgezoo.quantization.pact2 import PACT2


class QuantizedLayer(nn.Module):
    """Run a parameter-free layer between optional input and output ranges (PACT2).

    It takes the layer's slot in its parent. Only layers without parameters or buffers are
    accepted, so the only new state_dict keys are the ranges' (`<slot>.output_quant.*`);
    layers with state (conv, linear, BatchNorm) carry their ranges themselves instead.
    """

    def __init__(
        self,
        module: nn.Module,
        input_quant: PACT2 | None = None,
        output_quant: PACT2 | None = None,
    ) -> None:
        super().__init__()
        if next(iter(module.state_dict()), None) is not None:
            raise QuantizationConfigError(
                f"QuantizedLayer only wraps parameter-free layers (wrapping would rename their "
                f"state_dict keys); {type(module).__name__} has "
                f"{', '.join(module.state_dict())}"
            )
        self.module = module
        self.input_quant = input_quant
        self.output_quant = output_quant
        self.train(module.training)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.input_quant is not None:
            if not args or not isinstance(args[0], Tensor):
                raise QuantizationConfigError(
                    f"the input range of {type(self.module).__name__} needs a tensor as the "
                    f"first argument"
                )
            args = (self.input_quant(args[0]), *args[1:])
        out = self.module(*args, **kwargs)
        if self.output_quant is not None:
            out = self.output_quant(out)
        return out
