"""The rewrites of make_module_only: which traced call becomes which module, one table.

Each rewrite reads a torch.fx call (a function, a Tensor method or a module) with its arguments
bound by name and returns the module that computes the same values, or None where the call is
not one conversion can make module-only (a scalar add, a batch-axis cat, a mean over other
axes). Names follow torch.nn.functional's signatures.
"""

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgezoo.layers import (
    SELF_GATED,
    AddBlock,
    CatBlock,
    MulBlock,
    ResizeWith,
    SelfGate,
    validate_resize,
)
from edgezoo.layers.mul_block import mul_broadcast_problem

__all__ = ["Rewrite", "Site", "find_rewrite"]


@dataclass(frozen=True)
class Site:
    """One traced call: its bound arguments (by parameter name) and the shapes of tensors."""

    node: fx.Node
    arguments: dict[str, Any]
    shape: Callable[[Any], tuple[int, ...] | None]

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, fx.Node) and self.shape(value) is not None


@dataclass(frozen=True)
class Rewrite:
    """What a call becomes: its kind (for names and the log), the module and its inputs."""

    kind: str
    module: nn.Module
    inputs: tuple[Any, ...]
    mutates: fx.Node | None = None
    """The input an in-place original modified (its later readers would see the change)."""


def _add(site: Site) -> Rewrite | None:
    a, b = site.arguments["input"], site.arguments["other"]
    if site.arguments.get("alpha", 1) != 1:
        return None
    for zero, tensor in ((a, b), (b, a)):
        # A branch sum that starts from 0 (MobileOne's `out = 0; out += conv(x)`): adding
        # zero is no op for TIDL, and it must not be left as a functional add.
        if type(zero) in (int, float) and zero == 0 and site.is_tensor(tensor):
            return Rewrite("add_zero", nn.Identity(), (tensor,))
    if not (site.is_tensor(a) and site.is_tensor(b)):
        return None
    if site.shape(a) != site.shape(b):
        return None  # a broadcasting add is not TIDL's Add; check_model names it
    return Rewrite("add", AddBlock(), ([a, b],), mutates=a if site.arguments["inplace"] else None)


def _mul(site: Site) -> Rewrite | None:
    a, b = site.arguments["input"], site.arguments["other"]
    if not (site.is_tensor(a) and site.is_tensor(b)):
        return None  # a constant factor: check_model says to fold it into the layer before
    if not (_reads_input(a) and _reads_input(b)):
        return None  # a learned scale (ConvNeXt's layer scale) is a weight, not a range
    if mul_broadcast_problem(site.shape(a), site.shape(b)) is not None:
        return None  # not TIDL's Mul; check_model names it
    if site.arguments["inplace"] and site.shape(site.node) != site.shape(a):
        return None
    return Rewrite("mul", MulBlock(), ([a, b],), mutates=a if site.arguments["inplace"] else None)


def _reads_input(node: fx.Node) -> bool:
    """Whether a traced value depends on the model's input (not only on parameters)."""
    pending, seen = [node], {node}
    while pending:
        current = pending.pop()
        if current.op == "placeholder":
            return True
        for parent in current.all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                pending.append(parent)
    return False


def _cat(site: Site) -> Rewrite | None:
    tensors, dim = list(site.arguments["tensors"]), site.arguments.get("dim", 0)
    if not tensors or not all(site.is_tensor(t) for t in tensors):
        return None
    if dim % len(site.shape(tensors[0])) == 0:
        return None  # the batch axis: TIDL rejects it and CatBlock refuses it
    return Rewrite("cat", CatBlock(dim), (tensors,))


def _activation(kind: str, build: Callable[..., nn.Module], *keys: str) -> Callable:
    def rewrite(site: Site) -> Rewrite:
        options = {key: site.arguments[key] for key in keys if key in site.arguments}
        module = build(**options)
        x = site.arguments["input"]
        mutates = x if getattr(module, "inplace", False) is True else None
        return Rewrite(kind, module, (x,), mutates=mutates)

    return rewrite


def _self_gate(kind: str, activation: type[nn.Module]) -> Callable:
    """x * gate(x) activations as a SelfGate (gate and product each get a range)."""

    def rewrite(site: Site) -> Rewrite:
        x = site.arguments["input"]
        mutates = x if site.arguments.get("inplace") else None
        return Rewrite(kind, SelfGate.replacing(activation()), (x,), mutates=mutates)

    return rewrite


def _clamp(site: Site) -> Rewrite | None:
    low, high = site.arguments.get("min"), site.arguments.get("max")
    if isinstance(low, fx.Node) or isinstance(high, fx.Node):
        return None
    if low == 0 and high is None:
        return Rewrite("relu", nn.ReLU(), (site.arguments["input"],))
    if low is None or high is None:
        return None
    return Rewrite("clip", nn.Hardtanh(float(low), float(high)), (site.arguments["input"],))


def _pool(kind: str, build: Callable[..., nn.Module], *keys: str) -> Callable:
    def rewrite(site: Site) -> Rewrite | None:
        if site.arguments.get("return_indices"):
            return None
        options = {key: site.arguments[key] for key in keys if key in site.arguments}
        return Rewrite(kind, build(**options), (site.arguments["input"],))

    return rewrite


def _flatten(site: Site) -> Rewrite:
    start, end = site.arguments.get("start_dim", 0), site.arguments.get("end_dim", -1)
    module = nn.Flatten(start, end)
    return Rewrite("flatten", module, (site.arguments["input"],))


def _mean(site: Site) -> Rewrite | None:
    x, dims = site.arguments["input"], site.arguments.get("dim")
    shape = site.shape(x)
    if shape is None or len(shape) != 4 or dims is None or site.arguments.get("dtype"):
        return None
    if {d % 4 for d in ((dims,) if isinstance(dims, int) else dims)} != {2, 3}:
        return None
    pool = nn.AdaptiveAvgPool2d(1)
    module = pool if site.arguments.get("keepdim") else nn.Sequential(pool, nn.Flatten(1))
    return Rewrite("global_pool", module, (x,))


def _resize(site: Site) -> Rewrite:
    """F.interpolate / nn.Upsample as ResizeWith; a resize TIDL cannot run raises TIDLRuleError
    (validate_resize) for the caller to name the node."""
    x = site.arguments["input"]
    scale = site.arguments.get("scale_factor")
    size = site.arguments.get("size")
    fixed = _fixed_size(size) if scale is None else None
    if scale is None and size is not None:
        in_shape, out_shape = site.shape(x), site.shape(site.node)
        ratios = {o / i for o, i in zip(out_shape[2:], in_shape[2:], strict=True)}
        scale = ratios.pop() if len(ratios) == 1 else tuple(sorted(ratios))
    if isinstance(scale, Sequence) and len(set(scale)) == 1:
        scale = scale[0]
    if isinstance(scale, float) and scale.is_integer():
        scale = int(scale)
    mode = site.arguments.get("mode", "nearest")
    factor = validate_resize(scale, mode, site.arguments.get("align_corners"))
    return Rewrite("resize", ResizeWith(factor, mode, output_size=fixed), (x,))


def _fixed_size(size: object) -> tuple[int, int] | None:
    """A resize's size argument as (H, W) when it is a constant (not read from a tensor)."""
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    if isinstance(size, Sequence) and len(size) == 2 and all(type(v) is int for v in size):
        return (size[0], size[1])
    return None


_INPUT = ("input",)
_INPLACE = ("input", "inplace")
_FUNCTIONS: dict[Any, tuple[tuple[str, ...], dict[str, Any], Callable]] = {}
"""call target -> (parameter names in order, defaults, rewrite)."""


def _register(targets: Sequence[Any], names: Sequence[str], defaults: dict, rewrite: Callable):
    for target in targets:
        _FUNCTIONS[target] = (tuple(names), defaults, rewrite)


_register((operator.add, torch.add, "add"), ("input", "other", "alpha"), {"inplace": False}, _add)
_register((operator.iadd, "add_"), ("input", "other", "alpha"), {"inplace": True}, _add)
_register((operator.mul, torch.mul, "mul"), ("input", "other"), {"inplace": False}, _mul)
_register((operator.imul, "mul_"), ("input", "other"), {"inplace": True}, _mul)
_register((torch.cat, torch.concat, torch.concatenate), ("tensors", "dim"), {}, _cat)
_register((F.relu, torch.relu, "relu"), _INPLACE, {}, _activation("relu", nn.ReLU, "inplace"))
_register((torch.relu_, "relu_"), _INPUT, {}, _activation("relu", lambda: nn.ReLU(True)))
_register((F.relu6,), _INPLACE, {}, _activation("relu6", nn.ReLU6, "inplace"))
_register(
    (F.hardtanh,),
    ("input", "min_val", "max_val", "inplace"),
    {},
    _activation("clip", nn.Hardtanh, "min_val", "max_val", "inplace"),
)
_register((torch.clamp, torch.clip, "clamp", "clip"), ("input", "min", "max"), {}, _clamp)
_register(
    (F.leaky_relu,),
    ("input", "negative_slope", "inplace"),
    {},
    _activation("leaky_relu", nn.LeakyReLU, "negative_slope", "inplace"),
)
_register((F.hardswish,), _INPLACE, {}, _self_gate("hardswish", nn.Hardswish))
_register((F.hardsigmoid,), _INPLACE, {}, _activation("hardsigmoid", nn.Hardsigmoid, "inplace"))
_register((F.silu,), _INPLACE, {}, _self_gate("silu", nn.SiLU))
_register((torch.sigmoid, F.sigmoid, "sigmoid"), _INPUT, {}, _activation("sigmoid", nn.Sigmoid))
_POOL_ARGS = ("input", "kernel_size", "stride", "padding")
_register(
    (F.max_pool2d, torch.max_pool2d),
    (*_POOL_ARGS, "dilation", "ceil_mode", "return_indices"),
    {},
    _pool("max_pool", nn.MaxPool2d, "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
)
_register(
    (F.avg_pool2d, torch._C._nn.avg_pool2d),
    (*_POOL_ARGS, "ceil_mode", "count_include_pad", "divisor_override"),
    {},
    _pool(
        "avg_pool",
        nn.AvgPool2d,
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
    ),
)
_register(
    (F.adaptive_avg_pool2d,),
    ("input", "output_size"),
    {},
    _pool("pool", nn.AdaptiveAvgPool2d, "output_size"),
)
_register(
    (F.adaptive_max_pool2d,),
    ("input", "output_size", "return_indices"),
    {},
    _pool("pool", nn.AdaptiveMaxPool2d, "output_size"),
)
_register((torch.flatten, "flatten"), ("input", "start_dim", "end_dim"), {}, _flatten)
_register((torch.mean, "mean"), ("input", "dim", "keepdim", "dtype"), {}, _mean)
_register(
    (F.interpolate, F.upsample),
    ("input", "size", "scale_factor", "mode", "align_corners"),
    {},
    _resize,
)


def _bind(names: tuple[str, ...], defaults: dict, node: fx.Node) -> dict[str, Any]:
    bound = dict(defaults)
    bound |= dict(zip(names, node.args, strict=False))
    bound |= {("input" if key == "self" else key): value for key, value in node.kwargs.items()}
    return bound


def _upsample_arguments(module: nn.Upsample, node: fx.Node) -> dict[str, Any]:
    return {
        "input": node.args[0],
        "size": module.size,
        "scale_factor": module.scale_factor,
        "mode": module.mode,
        "align_corners": module.align_corners,
    }


def find_rewrite(node: fx.Node, modules: dict[str, nn.Module], shape: Callable) -> Rewrite | None:
    """The rewrite of one traced node, or None when it stays as it is. Raises TIDLRuleError
    for a resize TIDL cannot run."""
    if node.op == "call_module":
        module = modules[node.target]
        if type(module) is nn.Upsample:
            return _resize(Site(node, _upsample_arguments(module, node), shape))
        if type(module) in SELF_GATED:
            arguments = {"input": node.args[0], "inplace": getattr(module, "inplace", False)}
            return _self_gate(type(module).__name__.lower(), type(module))(
                Site(node, arguments, shape)
            )
        return None
    if node.op not in ("call_function", "call_method"):
        return None
    entry = _FUNCTIONS.get(node.target)
    if entry is None:
        return None
    names, defaults, rewrite = entry
    return rewrite(Site(node, _bind(names, defaults, node), shape))
