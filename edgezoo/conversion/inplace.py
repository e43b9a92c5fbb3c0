"""In-place operations in a traced model: who else sees the change, and how to keep that when
quantization replaces the op by an out-of-place one.

An in-place activation (`nn.ReLU(inplace=True)`, `y.relu_()`, `a += b`) changes its input for
every later reader of that tensor. Quantized units compute out of place, so a later read of the
input would see the unchanged tensor: a silently different model. Conversion points such reads
at the op's result (the very value they saw) and refuses where the change reaches a later read
through a view (a slice, a reshape), which no out-of-place graph can say.
"""

import contextlib
import operator
from collections import Counter
from collections.abc import Callable, Iterator

import torch
from torch import fx, nn

from edgezoo.conversion.training_branches import source_line
from edgezoo.errors import ConversionError

__all__ = ["inplace_dependent_modules", "redirect_later_reads", "rewire_inplace_modules"]

_VIEW_METHODS = frozenset(
    {
        "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "t",
        "permute", "narrow", "select", "unsqueeze", "squeeze", "expand", "expand_as", "chunk",
        "split", "tensor_split", "unbind", "movedim", "as_strided", "diagonal", "unfold",
        "contiguous", "detach", "__getitem__",
    }
)  # fmt: skip
_VIEW_FUNCTIONS = frozenset(
    {
        operator.getitem, torch.reshape, torch.flatten, torch.transpose, torch.permute,
        torch.narrow, torch.select, torch.unsqueeze, torch.squeeze, torch.chunk, torch.split,
        torch.tensor_split, torch.unbind, torch.movedim, torch.detach,
    }
)  # fmt: skip


def _is_view(node: fx.Node) -> bool:
    """A call whose result may share memory with its first argument (conservatively)."""
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    return node.op == "call_function" and node.target in _VIEW_FUNCTIONS


def _aliases(value: fx.Node) -> set[fx.Node]:
    """value and every traced value that may share its memory: views of it, what it is a view
    of, and so on (an in-place change to one is seen through all of them)."""
    found, pending = set(), [value]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.add(current)
        pending += [user for user in current.users if _is_view(user) and user.args[0] is current]
        source = current.args[0] if _is_view(current) and current.args else None
        if isinstance(source, fx.Node):
            pending.append(source)
    return found


def _nodes_after(node: fx.Node) -> set[fx.Node]:
    later, seen = set(), False
    for other in node.graph.nodes:
        if other is node:
            seen = True
        elif seen:
            later.add(other)
    return later


def redirect_later_reads(node: fx.Node, mutated: fx.Node, kind: str) -> int:
    """`node` changed `mutated` in place: point later reads of `mutated` at node's result (what
    they saw); ConversionError naming the lines when the change reaches a later read through a
    view. Returns how many reads were pointed."""
    later = _nodes_after(node)
    readers = [user for user in mutated.users if user in later]
    for reader in readers:
        reader.replace_input_with(mutated, node)
    through_view = next(
        (
            user
            for alias in _aliases(mutated) - {mutated}
            for user in alias.users
            if user in later and user is not node
        ),
        None,
    )
    if through_view is not None:
        raise ConversionError(
            f"an in-place {kind} at {source_line(node)} changes a tensor that is read again "
            f"later through a view (at {source_line(through_view)}); quantized layers compute "
            "out of place, so write it out of place (y = torch.cat([y[:, :k], relu(y[:, k:])], "
            "1), y = a + b) and the quantized model computes what yours does"
        )
    return len(readers)


def rewire_inplace_modules(module: fx.GraphModule, changes: Counter) -> None:
    """For every call of a module that computes in place (`inplace=True`), point later reads of
    its input at its output (see redirect_later_reads)."""
    for node in list(module.graph.nodes):
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        called = module.get_submodule(node.target)
        if getattr(called, "inplace", False) is True:
            pointed = redirect_later_reads(node, node.args[0], type(called).__name__)
            if pointed:
                changes["reads after an in-place module"] += pointed


def inplace_dependent_modules(model: nn.Module, run: Callable[[], object]) -> list[str]:
    """The in-place modules of `model` whose writing in place changes its output: `run()` (one
    eval forward of the example input) gives another result when that module alone computes
    out of place. Each module's flag is restored. A model on the meta device has no values to
    compare, so none is named there."""
    modules = [(n, m) for n, m in model.named_modules() if getattr(m, "inplace", False) is True]
    if not modules:
        return []
    reference = run()
    if any(t.is_meta for t in _tensors(reference)):
        return []
    with _out_of_place([m for _, m in modules]):
        if _same(run(), reference):
            return []
    dependent = []
    for name, single in modules:
        with _out_of_place([single]):
            if not _same(run(), reference):
                dependent.append(name)
    return dependent


@contextlib.contextmanager
def _out_of_place(modules: list[nn.Module]) -> Iterator[None]:
    """Within the block, these modules compute out of place; their flags come back after."""
    for module in modules:
        module.inplace = False
    try:
        yield
    finally:
        for module in modules:
            module.inplace = True


def _tensors(output: object) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from _tensors(value)
    elif isinstance(output, tuple | list):
        for value in output:
            yield from _tensors(value)


def _same(first: object, second: object) -> bool:
    """Whether two model outputs (tensors, or tuples / lists / dicts of them) are bit-equal."""
    if isinstance(first, torch.Tensor):
        return isinstance(second, torch.Tensor) and torch.equal(first, second)
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(_same(first[k], second[k]) for k in first)
    if isinstance(first, tuple | list):
        return len(first) == len(second) and all(map(_same, first, second))
    return first == second
