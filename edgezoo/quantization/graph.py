"""Leaf-module dataflow graph of a module-only model, recorded from one forward with hooks.

Quantization needs to know, for every leaf module, which module produced each of its inputs and
which modules consume its output (is a conv followed by a BatchNorm? is an add followed by an
activation?). One eval-mode forward of the example input answers that: a forward hook on every
leaf records the producers of the tensors it receives and registers itself as the producer of
the tensors it returns. The id(tensor) -> producer map lives in the tracing function only, and
every tensor seen is kept referenced until the trace ends, so no id can be reused by a new
tensor. Nothing is attached to tensors and every hook is removed afterwards.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from edgezoo.module_state import kept_modes

INPUT = "<input>"
"""Producer name of the model's input tensors."""

UNKNOWN = "<unknown>"
"""Producer name of tensors made outside any leaf module (a functional op in a forward)."""

_NO_OP_TYPES = (nn.Identity, nn.modules.dropout._DropoutNd)
MOVEMENT_OPS = frozenset(
    {
        "reshape",
        "view",
        "flatten",
        "unflatten",
        "transpose",
        "permute",
        "contiguous",
        "squeeze",
        "unsqueeze",
        "chunk",
        "split",
        "narrow",
        "__getitem__",
    }
)
"""Ops that only move values (channel splits and shuffles): their outputs keep their input's
grid, so the layers reading them know their input's scale."""


@dataclass
class LeafNode:
    """One leaf module call: who produced its inputs, who consumes its output."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    consumers: list[str] = field(default_factory=list)
    is_output: bool = False
    calls: int = 1


@dataclass
class LeafGraph:
    """Leaf modules in execution order, with the consumers of the input and the output producers."""

    nodes: dict[str, LeafNode]
    input_consumers: list[str]
    output_producers: list[str]


def is_leaf(module: nn.Module) -> bool:
    """A module without children: the unit quantization replaces or gives a range."""
    return next(module.children(), None) is None


def iter_tensors(value: Any) -> Iterator[Tensor]:
    """Every tensor inside nested tuples, lists and dicts (AddBlock takes a tuple)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from iter_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_tensors(item)


def call_model(model: nn.Module, example_input: Tensor | tuple[Any, ...]) -> Any:
    """Call the model the way check_model does: a tuple is a tuple of positional arguments."""
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    return model(*inputs)


def trace_leaf_graph(model: nn.Module, example_input: Tensor | tuple[Any, ...]) -> LeafGraph:
    """Run one eval-mode, no-grad forward and record the leaf-module dataflow graph."""
    producers = _Producers(example_input)
    nodes: dict[str, LeafNode] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if name in nodes:
                nodes[name].calls += 1
                return
            inputs = tuple(producers.of(t) for t in iter_tensors((args, kwargs)))
            nodes[name] = LeafNode(name, module, inputs)
            # An Identity or eval-mode Dropout hands back its input unchanged: the tensor keeps
            # its real producer, so later readers of it are not credited to a no-op.
            kept = {id(t) for t in iter_tensors((args, kwargs))}
            producers.made(name, output, kept if isinstance(module, _NO_OP_TYPES) else set())

        return hook

    handles = [
        module.register_forward_hook(record(name), with_kwargs=True)
        for name, module in model.named_modules()
        if is_leaf(module) and module is not model
    ]
    try:
        with kept_modes(model), torch.no_grad(), _MovementWatcher(producers.credit):
            model.eval()
            output = call_model(model, example_input)
    finally:
        for handle in handles:
            handle.remove()

    input_consumers = []
    for node in nodes.values():
        for producer in dict.fromkeys(node.inputs):
            if producer == INPUT:
                input_consumers.append(node.name)
            elif producer in nodes:
                nodes[producer].consumers.append(node.name)
    output_producers = list(dict.fromkeys(producers.of(t) for t in iter_tensors(output)))
    for name in output_producers:
        if name in nodes:
            nodes[name].is_output = True
    return LeafGraph(nodes, input_consumers, output_producers)


class _Producers:
    """Which leaf made each traced tensor (by identity; the tensors are kept alive so that ids
    stay unique)."""

    def __init__(self, example_input: Any) -> None:
        self._by_id: dict[int, str] = {}
        self._alive: list[Tensor] = []
        self.made(INPUT, example_input, set())

    def of(self, tensor: Tensor) -> str:
        return self._by_id.get(id(tensor), UNKNOWN)

    def made(self, name: str, output: Any, kept: set[int]) -> None:
        """`name` produced the tensors of `output`, except those (ids in kept) it passed on."""
        for tensor in iter_tensors(output):
            if id(tensor) not in kept:
                self._by_id[id(tensor)] = name
                self._alive.append(tensor)

    def credit(self, source: Tensor, output: Any) -> None:
        """Data movement (a reshape, transpose, chunk or slice, outside any leaf) keeps its
        input's values, so its outputs lie on the grid of whoever made the input."""
        producer = self.of(source)
        if producer == UNKNOWN:
            return
        fresh = [t for t in iter_tensors(output) if id(t) not in self._by_id]
        self.made(producer, fresh, set())


class _MovementWatcher(TorchFunctionMode):
    """Report every data-movement op of the forward (with its input and outputs) to `credit`."""

    def __init__(self, credit: Any) -> None:
        super().__init__()
        self._credit = credit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", None) in MOVEMENT_OPS and args and isinstance(args[0], Tensor):
            self._credit(args[0], output)
        return output
