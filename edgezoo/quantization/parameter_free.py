"""Parameter-free layers in a quantized model: with ranges of their own (QuantizedLayer: add,
concat, pool) or kept on their input's grid (InputGridLayer: global average pool, bilinear
resize)."""

from typing import Any

from torch import Tensor, nn

from edgezoo.errors import QuantizationConfigError
from edgezoo.layers import ResizeWith
from edgezoo.quantization.input_grid import InputGridMixin
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
        _refuse_state(module, type(self).__name__)
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


class InputGridLayer(InputGridMixin, nn.Module):
    """A parameter-free layer whose output stays on its input's grid: it rounds it there.

    A global average pool and a bilinear resize make values between their input's grid points.
    The integer graph keeps such an output at its input's scale (an integer sum and a rounding
    division, fixed-point interpolation weights), so QAT rounds it onto that grid too, with the
    input range's rounding (off inside clip_only). Max pools, nearest resizes and flatten only
    move values and need no such layer.
    """

    input_grid: PACT2

    def __init__(self, module: nn.Module, input_grid: PACT2) -> None:
        super().__init__()
        _refuse_state(module, type(self).__name__)
        self.module = module
        self._attach_input_grid(input_grid)
        self.train(module.training)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.input_grid.fake_quantize(self.module(*args, **kwargs))


def makes_new_values(module: nn.Module) -> bool:
    """Whether a pass-through layer's output holds values between its input's grid points."""
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return True
    mode = getattr(module, "mode", None)
    return isinstance(module, ResizeWith | nn.Upsample) and mode in ("bilinear", "linear")


def _refuse_state(module: nn.Module, wrapper: str) -> None:
    if next(iter(module.state_dict()), None) is not None:
        raise QuantizationConfigError(
            f"{wrapper} only wraps parameter-free layers (wrapping would rename their "
            f"state_dict keys); {type(module).__name__} has {', '.join(module.state_dict())}"
        )
