"""Code that reads self.training inside a traced forward: kept live where it can be, refused
where it cannot.

torch.fx evaluates `self.training` once, while tracing, so a traced graph is frozen to the mode
the model was in. make_module_only traces the model in both modes and compares the graphs: a
functional dropout whose `training` argument is all that differs becomes an nn.Dropout (which
reads its own mode at run time, as the original did); any other difference is refused with the
source line that branches.
"""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgezoo.errors import ConversionError
from edgezoo.module_state import kept_modes

T = TypeVar("T")

__all__ = [
    "ModeDependentCall",
    "dropout_module",
    "mode_dependent_calls",
    "source_line",
    "trace_in_both_modes",
]

_DROPOUTS = {
    F.dropout: nn.Dropout,
    F.dropout1d: nn.Dropout1d,
    F.dropout2d: nn.Dropout2d,
    F.dropout3d: nn.Dropout3d,
    F.alpha_dropout: nn.AlphaDropout,
    F.feature_alpha_dropout: nn.FeatureAlphaDropout,
}
# Frames of torch and of this package's tracer (its call_module) are not the user's code.
_NOT_USER_CODE = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)(?:\n\s+(.+))?')


@dataclass(frozen=True)
class ModeDependentCall:
    """A functional dropout whose `training` was read from self.training while tracing."""

    node_name: str
    module: nn.Module


def source_line(node: fx.Node) -> str:
    """Where the user's code made a traced call: 'file:line in function: code' of the two
    innermost frames outside torch, caller first (a traced node records the stack from the
    outermost forward inward)."""
    if node.op == "output":
        return "the forward's return (what it returns differs between the modes)"
    frames = [m.groups() for m in _FRAME.finditer(node.stack_trace or "")]
    frames = [frame for frame in frames if not frame[0].startswith(_NOT_USER_CODE)]
    if not frames:
        return f"traced node {node.name!r} ({node.format_node()})"
    return " -> ".join(
        f"{path}:{line} in {function}" + (f": {code.strip()}" if code else "")
        for path, line, function, code in frames[-2:]
    )


def user_call_site(node: fx.Node) -> str | None:
    """'file:line' of the innermost user frame (not torch's, not the tracer's) that made a
    traced call, or None."""
    frames = [m.groups() for m in _FRAME.finditer(node.stack_trace or "")]
    frames = [frame for frame in frames if not frame[0].startswith(_NOT_USER_CODE)]
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else None


def dropout_module(node: fx.Node) -> nn.Module | None:
    """The nn.Dropout-family module computing a functional dropout call, or None."""
    build = _DROPOUTS.get(node.target) if node.op == "call_function" else None
    if build is None:
        return None
    names = ("input", "p", "training", "inplace")
    bound = {"p": 0.5, "inplace": False} | dict(zip(names, node.args, strict=False))
    bound |= node.kwargs
    if isinstance(bound["p"], fx.Node):
        return None
    return build(float(bound["p"]), inplace=bool(bound["inplace"]))


def _signature(node: fx.Node) -> tuple:
    """What a node computes, with its inputs by name: equal for the same call in both traces."""

    def plain(value):
        return fx.node.map_arg(value, lambda n: ("node", n.name))

    return (node.op, node.target, node.name, plain(node.args), plain(node.kwargs))


def _without_training(node: fx.Node) -> tuple:
    """_signature without a dropout's `training` argument (keyword or third positional)."""
    kwargs = {k: v for k, v in node.kwargs.items() if k != "training"}
    args = tuple(a for i, a in enumerate(node.args) if i != 2)
    names = (fx.node.map_arg(args, lambda n: n.name), fx.node.map_arg(kwargs, lambda n: n.name))
    return (node.op, node.target, node.name, *names)


def mode_dependent_calls(
    model_name: str, traced: fx.GraphModule, flipped: fx.GraphModule
) -> list[ModeDependentCall]:
    """Compare the graph traced in the model's mode with the one traced in the other mode:
    the dropouts to keep live, or ConversionError naming the first line that branches."""
    ours, theirs = list(traced.graph.nodes), list(flipped.graph.nodes)
    calls = []
    for index, node in enumerate(ours):
        other = theirs[index] if index < len(theirs) else None
        if other is not None and _signature(node) == _signature(other):
            continue
        module = dropout_module(node)
        same_call = other is not None and _without_training(node) == _without_training(other)
        if module is None or not same_call:
            raise _branch_error(model_name, node, traced.training)
        calls.append(ModeDependentCall(node.name, module))
    if len(theirs) > len(ours):
        raise _branch_error(model_name, theirs[len(ours)], not traced.training)
    return calls


def _branch_error(model_name: str, node: fx.Node, mode: bool) -> ConversionError:
    where = source_line(node)
    return ConversionError(
        f"{model_name}'s traced forward depends on train/eval mode at {where}: torch.fx fixes "
        f"self.training to the mode it traced in ({'train' if mode else 'eval'}), so the "
        "converted model would compute that branch in both modes. Move the mode-dependent "
        "code into a parameter-free module of its own (edgezoo keeps those whole), or build "
        "the model without it (e.g. aux_logits=False, drop_rate=0)"
    )


def trace_in_both_modes(trace: Callable[[nn.Module], T], model: nn.Module) -> tuple[T, T]:
    """trace(model) with every module in the model's own mode, then every module in the other
    mode; modes restored afterwards. A child left in eval while its parent trains (a frozen
    block) is traced in both modes too, so a branch on its mode is seen."""
    mode = model.training
    with kept_modes(model):
        model.train(mode)
        ours = trace(model)
        model.train(not mode)
        return ours, trace(model)
