"""Subclasses of nn.Linear / nn.Conv2d that compute exactly what their base class computes
(timm's Linear only adds a TorchScript branch): quantization treats them as their base class.

Whether a subclass does is read from its own traced forward: one F.linear (or F.conv2d with the
layer's stride, padding, dilation and groups) of its input, its weight and its bias, nothing
else. A subclass that does more (weight standardisation, scaling) is left alone.
"""

import torch.nn.functional as F
from torch import fx, nn

__all__ = ["plain_base"]

_BASES = (nn.Linear, nn.Conv2d)


def plain_base(module: nn.Module) -> type[nn.Module] | None:
    """nn.Linear or nn.Conv2d when `module` is one of them (or a subclass computing as it)."""
    base = next((b for b in _BASES if isinstance(module, b)), None)
    if base is None or type(module) is base or type(module).forward is base.forward:
        return base
    return base if _traces_as_base(module, base) else None


def _traces_as_base(module: nn.Module, base: type[nn.Module]) -> bool:
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # a forward fx cannot trace is not provably the base's
        return False
    calls = [n for n in graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    attrs = {n.target for n in graph.nodes if n.op == "get_attr"}
    if len(calls) != 1 or not attrs <= {"weight", "bias"}:
        return False
    call = calls[0]
    if base is nn.Linear:
        return call.target is F.linear and _reads_own_parameters(call, module)
    expected = (module.stride, module.padding, module.dilation, module.groups)
    return (
        call.target is F.conv2d
        and module.padding_mode == "zeros"
        and _reads_own_parameters(call, module)
        and tuple(_as_tuple(a) for a in call.args[3:7]) == tuple(map(_as_tuple, expected))
    )


def _reads_own_parameters(call: fx.Node, module: nn.Module) -> bool:
    """The call's first three arguments are the input, module.weight and module.bias."""
    args = [*call.args, call.kwargs.get("bias")]
    weight, bias = args[1], args[2]
    own_bias = (module.bias is None and bias is None) or getattr(bias, "target", None) == "bias"
    return getattr(weight, "target", None) == "weight" and own_bias


def _as_tuple(value: object) -> object:
    """A conv option as F.conv2d reads it: an int stands for the same value on both axes."""
    if isinstance(value, int):
        return (value, value)
    return tuple(value) if isinstance(value, list) else value
