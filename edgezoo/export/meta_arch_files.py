"""A detector's export: its meta-architecture recorded in the graph and the prototxt TIDL
reads beside it (object_detection:meta_layers_names_list), built from the traced head outputs'
map sizes and the input size."""

from collections.abc import Sequence
from pathlib import Path

import onnx
from torch import Tensor

from edgezoo.detection import (
    META_ARCH_PROP,
    MetaArch,
    meta_arch_to_json,
    to_prototxt,
)
from edgezoo.tidl.rules import graph_properties

__all__ = ["META_ARCH_SUFFIX", "meta_arch_text", "prototxt_beside", "record_meta_arch"]

META_ARCH_SUFFIX = "_meta_arch.prototxt"
"""The prototxt's name beside the graph: <stem>_meta_arch.prototxt."""


def meta_arch_text(
    meta: MetaArch, example: Tensor, names: Sequence[str], reference: Sequence[Tensor]
) -> str:
    """The prototxt of the traced detector: prior boxes for its input size and map sizes."""
    outputs = dict(zip(names, reference, strict=True))
    in_size = (int(example.shape[-2]), int(example.shape[-1]))
    return to_prototxt(meta.meta_arch(in_size, meta.grid_sizes(outputs)))


def prototxt_beside(onnx_path: Path) -> str | None:
    """The text of the <stem>_meta_arch.prototxt an export wrote beside a graph, if there."""
    path = onnx_path.with_name(onnx_path.stem + META_ARCH_SUFFIX)
    return path.read_text() if path.is_file() else None


def record_meta_arch(proto: onnx.ModelProto, meta: MetaArch) -> None:
    """Record what the head outputs mean, for verify, evaluate --simulate and the decoding."""
    props = graph_properties(proto)
    props[META_ARCH_PROP] = meta_arch_to_json(meta)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
