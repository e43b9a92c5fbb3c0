"""A detector's meta-architecture: what its raw head outputs mean (TIDL's term). Each kind
(SSD, YOLOX) is a frozen dataclass with the same methods (loss, decode, meta_arch,
head_channels, to_dict); this module finds a model's and reads one back from a graph."""

import json
from collections.abc import Mapping
from typing import Any, Protocol

import onnx
from torch import Tensor, nn

from edgezoo.detection.postprocess import Detections
from edgezoo.detection.ssd import SSDMetaArch
from edgezoo.detection.yolox import YOLOXMetaArch
from edgezoo.errors import UsageError

META_ARCH_PROP = "edgezoo.detection_meta_arch"
"""The graph property holding a detector's meta-architecture as JSON."""


class MetaArch(Protocol):
    """What the detection task, the exporter and the verifier ask of a meta-architecture."""

    kind: str
    meta_arch_type: int
    num_classes: int

    @property
    def head_outputs(self) -> tuple[str, ...]: ...

    def loss(self, outputs: Mapping[str, Tensor], targets: Tensor) -> Tensor: ...

    def decode(self, outputs: Mapping[str, Tensor]) -> list[Detections]: ...

    def meta_arch(self, in_size: tuple[int, int], grid_sizes: list) -> dict[str, Any]: ...

    def grid_sizes(self, outputs: Mapping[str, Tensor]) -> list[tuple[int, int]]: ...

    def head_channels(self) -> dict[str, int]: ...

    def to_dict(self) -> dict[str, Any]: ...


META_ARCHS: dict[str, type] = {SSDMetaArch.kind: SSDMetaArch, YOLOXMetaArch.kind: YOLOXMetaArch}


def find_meta_arch(model: nn.Module) -> MetaArch | None:
    """The meta-architecture of a detector (also inside a QAT or DDP wrapper); None for other
    models."""
    for module in model.modules():
        found = getattr(module, "meta_arch", None)
        if found is not None and type(found) in META_ARCHS.values():
            return found
    return None


def meta_arch_of(model: nn.Module) -> MetaArch:
    """The meta-architecture of a detector; UsageError for other models."""
    found = find_meta_arch(model)
    if found is not None:
        return found
    raise UsageError(
        f"{type(model).__name__} is not an edgezoo detector (no module has a `meta_arch`): "
        "build one with edgezoo.get_model('ssdlite_mobilenetv2_lite', ...)"
    )


def meta_arch_to_json(meta: MetaArch) -> str:
    return json.dumps(meta.to_dict(), sort_keys=True)


def graph_meta_arch(proto: onnx.ModelProto) -> MetaArch | None:
    """The meta-architecture an export recorded in a graph; None for other graphs."""
    for prop in proto.metadata_props:
        if prop.key == META_ARCH_PROP:
            return meta_arch_from_json(prop.value)
    return None


def meta_arch_from_json(text: str) -> MetaArch:
    """A meta-architecture recorded in a graph; UsageError for a kind this edgezoo lacks."""
    data = json.loads(text)
    kind = data.get("kind")
    if kind not in META_ARCHS:
        raise UsageError(
            f"the graph records a {kind!r} detector; this edgezoo knows {', '.join(META_ARCHS)}"
        )
    return META_ARCHS[kind].from_dict(data)
