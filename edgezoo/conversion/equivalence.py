"""The converted model must compute what the original computes: checked on the example input.

torch.fx records what a forward does to traced values, not everything Python does: `f += g`
on a tensor some view also reads traces as an out-of-place add, so a later reader of the view
sees other values than in the original. Running both models on the example input, in eval mode
and in the model's training mode (same random seed, so dropout draws alike), catches this and
anything like it before a wrong model reaches training.

Both run as float64 copies: a rewrite that computes the same function in another order (SiLU as
x * sigmoid(x), amplified through a deep train-mode network) then agrees far below the
tolerance, while a wrong rewrite does not. A model that cannot run in float64 is compared in
its own precision.
"""

import copy

import torch
from torch import Tensor, nn
from torch.utils import _pytree

from edgezoo.errors import ConversionError

__all__ = ["check_equivalent", "compare_outputs", "output_difference"]


def _forward(model: nn.Module, inputs: tuple, training: bool) -> object:
    model.train(training)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        return model(*inputs)


class _Widened:
    """A model with its float64 copy (made once), run in float64 where it can be, else as
    it is."""

    def __init__(self, model: nn.Module, inputs: tuple) -> None:
        self.model, self.inputs = model, inputs
        try:
            self.wide: nn.Module | None = copy.deepcopy(model).double()
        except (RuntimeError, TypeError, copy.Error):
            self.wide = None
        self.wide_inputs = tuple(
            x.double() if isinstance(x, Tensor) and x.is_floating_point() else x for x in inputs
        )

    def run(self, training: bool) -> object:
        if self.wide is not None:
            try:
                return _forward(self.wide, self.wide_inputs, training)
            except (RuntimeError, TypeError):
                pass  # an op without a float64 kernel: compare in the model's own precision
        return _forward(self.model, self.inputs, training)


def compare_outputs(
    original: nn.Module, converted: nn.Module, inputs: tuple, training: bool
) -> str | None:
    """Why the two models' outputs differ on inputs in one mode (same seed), or None."""
    return output_difference(
        _Widened(original, inputs).run(training), _Widened(converted, inputs).run(training)
    )


def _plain(value: object) -> object:
    """OrderedDicts as dicts (fx returns a dict where a forward built an OrderedDict; the keys
    and their order are what matter)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if type(value) is tuple:
        return tuple(_plain(item) for item in value)
    return value


def output_difference(expected: object, got: object) -> str | None:
    """Why two outputs differ (structure, type, shape or values), or None when they agree."""
    leaves, spec = _pytree.tree_flatten(_plain(expected))
    other_leaves, other_spec = _pytree.tree_flatten(_plain(got))
    if spec != other_spec:
        return f"the outputs' structure differs ({spec} became {other_spec})"
    for index, (a, b) in enumerate(zip(leaves, other_leaves, strict=True)):
        if not isinstance(a, Tensor):
            if a != b:
                return f"output {index} was {a!r}, became {b!r}"
            continue
        if not isinstance(b, Tensor) or a.shape != b.shape:
            return f"output {index} has shape {tuple(a.shape)}, became {getattr(b, 'shape', b)}"
        if a.is_meta or b.is_meta:
            continue
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True):
            diff = (a.double() - b.double()).abs().max().item()
            return f"output {index} differs by up to {diff:.3g}"
    return None


def check_equivalent(original: nn.Module, converted: nn.Module, inputs: tuple) -> type | None:
    """Raise ConversionError when the converted model's outputs (every one, in eval mode and in
    the original's training mode) differ from the original's on the example input; return the
    type of the original's eval output. The caller restores modes and buffers (a train-mode
    forward moves BatchNorm statistics)."""
    modes = [False] + ([True] if original.training else [])
    if any(t.is_meta for t in (*original.parameters(), *original.buffers())):
        modes = [False]  # meta tensors: outputs have shapes but no values; types still count
    returned = None
    first, second = _Widened(original, inputs), _Widened(converted, inputs)
    for training in modes:
        try:
            expected = first.run(training)
        except Exception:  # e.g. train-mode BatchNorm on a batch of one: nothing to compare
            continue
        returned = returned or type(expected)
        problem = output_difference(expected, second.run(training))
        if problem is not None:
            mode = "train" if training else "eval"
            raise ConversionError(
                f"the converted {type(original).__name__} computes something else than the "
                f"original on the example input in {mode} mode: {problem}. torch.fx traces "
                "`a += b` out of place, so a view of `a` taken before it keeps the old values: "
                "write such adds out of place, or convert by hand"
            )
    return returned
