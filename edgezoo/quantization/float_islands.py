"""Layers left in float inside an exactly evaluated (float64) quantized model.

A wrapper with exact eval runs its quantized units in float64, where their integer arithmetic is
exact. Layers quantization leaves in float (ConvTranspose2d, GroupNorm, LayerNorm, a custom
weighted leaf) hold float32 weights and would fail on a float64 input; within `float_islands`
they compute as they always do, in their own dtype, their output read back as float64.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from edgezoo.quantization.batch_norm import QuantBatchNormMixin
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.weight_layers import QuantWeightMixin

__all__ = ["float_islands"]

_QUANTIZED = (QuantWeightMixin, QuantBatchNormMixin, PACT2)


def _own_float_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of a layer's own floating parameters or buffers (None when it holds none)."""
    for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


@contextmanager
def float_islands(model: nn.Module) -> Iterator[None]:
    """Within the block, float layers of `model` that hold tensors of another dtype than
    float64 take their input in their own dtype and give float64 back (hooks removed after)."""
    handles = []
    try:
        for module in model.modules():
            if isinstance(module, _QUANTIZED):
                continue
            dtype = _own_float_dtype(module)
            if dtype is None or dtype == torch.float64:
                continue
            handles.append(module.register_forward_pre_hook(_inputs_to(dtype)))
            handles.append(module.register_forward_hook(_output_to_float64))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _inputs_to(dtype: torch.dtype):
    def cast(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(a.to(dtype) if _is_float64(a) else a for a in args)

    return cast


def _output_to_float64(_module: nn.Module, _args: object, output: Any) -> Any:
    if isinstance(output, Tensor) and output.is_floating_point():
        return output.double()
    return output


def _is_float64(value: object) -> bool:
    return isinstance(value, Tensor) and value.dtype == torch.float64
