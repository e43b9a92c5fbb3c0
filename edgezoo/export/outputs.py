"""A model's outputs as graph outputs: which tensors, in which order, under which names.

One tensor (also one inside a dict, tuple or list, as torchvision's segmentation models return
{"out": ...}) is the graph's `output`. Several (an FPN or detection neck's feature maps, a dict
of heads) are named by their dict keys, a namedtuple's fields, or output_0, output_1, ...
A key that is a number (torchvision's FPN returns {"0": ..., "1": ..., "pool": ...}) is not a
name the exporter accepts, so it becomes output_<key>.
"""

from typing import Any

from torch import Tensor, nn

from edgezoo.errors import ExportVerificationError
from edgezoo.export.graph_passes import OUTPUT_NAME

__all__ = ["output_tensors", "traceable_outputs"]


def output_tensors(output: Any) -> tuple[tuple[str, ...], list[Tensor]]:
    """(graph output names, tensors) of a model's output, in the order ONNX export writes them."""
    if isinstance(output, Tensor):
        return (OUTPUT_NAME,), [output]
    if isinstance(output, dict):
        names, tensors = [_key_name(key) for key in output], list(output.values())
    elif isinstance(output, list | tuple):
        fields = getattr(output, "_fields", None)
        names = list(fields) if fields else [f"{OUTPUT_NAME}_{i}" for i in range(len(output))]
        tensors = list(output)
    else:
        names, tensors = [], []
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise ExportVerificationError(
            f"the model returns {type(output).__name__}, not tensors in a flat tuple, list or "
            "dict: export_onnx writes each tensor as a graph output; return a tensor, or a "
            "flat tuple or dict of tensors"
        )
    if len(tensors) == 1:
        return (OUTPUT_NAME,), tensors
    if len(set(names)) != len(names):
        raise ExportVerificationError(f"the model's output names repeat: {names}")
    repeated = [n for i, n in enumerate(names) if any(tensors[i] is t for t in tensors[:i])]
    if repeated:
        raise ExportVerificationError(
            f"the model returns the same tensor more than once ({', '.join(repeated)} repeats "
            "an earlier output): a graph output is one value; return it once"
        )
    return tuple(names), tensors


def traceable_outputs(model: nn.Module, output: Any) -> nn.Module:
    """The model to trace for export: itself, or for a dict output with keys that are not
    strings (which the tracer turns into graph values and then fails on) a wrapper returning
    the dict's values as a tuple, in output_tensors' order (node names gain a `model` scope)."""
    if isinstance(output, dict) and not all(isinstance(key, str) for key in output):
        return _ValuesOf(model)
    return model


class _ValuesOf(nn.Module):
    """A model whose dict output is returned as the tuple of its values."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model(x).values())


def _key_name(key: object) -> str:
    """A dict key as a graph output name; TorchScript refuses names that are numbers."""
    name = str(key)
    return f"{OUTPUT_NAME}_{name}" if name.isdigit() else name
