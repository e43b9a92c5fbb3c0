"""TensorBits: the bit width of every tensor of an exported graph, read and written here only.

An export records its base widths (rules.WEIGHT_BITS_PROP / ACTIVATION_BITS_PROP) and, for a
mixed-precision model, the tensors whose width differs under TENSOR_BITS_PROP: a JSON object
{"version": 1, "activations": {Clip output: bits}, "weights": {Conv/Gemm output: bits}}. A
graph written before per-tensor widths existed has no such entry and reads as uniform.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from edgezoo.errors import UnreadableModelError
from edgezoo.tidl import rules

__all__ = ["TENSOR_BITS_PROP", "TENSOR_BITS_VERSION", "TensorBits"]

TENSOR_BITS_PROP = "edgezoo.tensor_bits"
TENSOR_BITS_VERSION = 1


@dataclass(frozen=True)
class TensorBits:
    """Base widths, and the tensors that differ: an activation by its Clip's output name, a
    layer's weights by its Conv/Gemm output name."""

    bitwidth_weights: int = 8
    bitwidth_activations: int = 8
    activations: Mapping[str, int] = field(default_factory=dict)
    weights: Mapping[str, int] = field(default_factory=dict)

    def activation_bits(self, tensor: str) -> int:
        """The width of the grid the Clip writing `tensor` puts it on."""
        return self.activations.get(tensor, self.bitwidth_activations)

    def weight_bits(self, tensor: str) -> int:
        """The width of the weights of the Conv/Gemm writing `tensor`."""
        return self.weights.get(tensor, self.bitwidth_weights)

    @property
    def mixed(self) -> bool:
        return bool(self.activations or self.weights)

    @property
    def widest(self) -> int:
        """The widest width of any tensor."""
        widths = [*self.activations.values(), *self.weights.values()]
        return max(self.bitwidth_weights, self.bitwidth_activations, *widths)

    def properties(self) -> dict[str, str]:
        """The graph metadata entries that record these widths."""
        props = {
            rules.WEIGHT_BITS_PROP: str(self.bitwidth_weights),
            rules.ACTIVATION_BITS_PROP: str(self.bitwidth_activations),
        }
        if self.mixed:
            record = {
                "version": TENSOR_BITS_VERSION,
                "activations": dict(sorted(self.activations.items())),
                "weights": dict(sorted(self.weights.items())),
            }
            props[TENSOR_BITS_PROP] = json.dumps(record, separators=(",", ":"))
        return props

    @classmethod
    def of_graph(cls, proto) -> "TensorBits":
        """The widths an export recorded (8 bits throughout when it recorded none);
        UnreadableModelError when the record is malformed or from a newer edgezoo."""
        weights, activations = rules.graph_bits(proto)
        text = rules.graph_properties(proto).get(TENSOR_BITS_PROP)
        if text is None:
            return cls(weights, activations)
        try:
            record = json.loads(text)
            version = record["version"]
            tables = {key: dict(record[key]) for key in ("activations", "weights")}
        except (ValueError, KeyError, TypeError) as err:
            raise _unreadable(f"is not a per-tensor width record ({err})") from err
        if version != TENSOR_BITS_VERSION:
            raise _unreadable(f"has version {version!r}; this edgezoo reads version 1")
        for table in tables.values():
            bad = {k: v for k, v in table.items() if not (isinstance(v, int) and 2 <= v <= 16)}
            if bad:
                raise _unreadable(f"holds widths outside [2, 16]: {bad}")
        return cls(weights, activations, tables["activations"], tables["weights"])


def _unreadable(problem: str) -> UnreadableModelError:
    return UnreadableModelError(
        f"the graph's metadata {TENSOR_BITS_PROP} {problem}; re-export the model with "
        "edgezoo.export_onnx (or a newer edgezoo)"
    )
