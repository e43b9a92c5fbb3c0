"""Checks of a detector's meta-architecture prototxt against its graph (rule `meta-arch`):
what TIDL will read beside the ONNX must name the graph's tensors, fit their channels and
strides, and (for a graph edgezoo exported) give the prior boxes the model was trained with."""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from edgezoo.detection import (
    META_ARCH_PROP,
    caffe_prior_boxes,
    caffe_prior_sides,
    meta_arch_from_json,
    parse_prototxt,
)
from edgezoo.errors import EdgezooError
from edgezoo.export.report import GraphViolation
from edgezoo.onnxgraph.indexed import IndexedGraph
from edgezoo.tidl.rules import graph_properties

RULE = "meta-arch"
PRIOR_TOLERANCE = 1e-5
"""Largest difference (relative to the image) between TIDL's and the model's prior boxes."""


def check_meta_arch(graph: IndexedGraph, text: str | None) -> Iterator[GraphViolation]:
    """Every way the prototxt `text` does not describe `graph` (a detector edgezoo exported
    without a prototxt is one too)."""
    recorded = graph_properties(graph.proto).get(META_ARCH_PROP)
    if text is None:
        if recorded is not None:
            yield GraphViolation(
                RULE, "<graph>", "the graph is a detector, and TIDL needs its meta-architecture "
                "prototxt (object_detection:meta_layers_names_list): pass it (CLI: --meta-arch "
                "FILE, or keep the exported <stem>_meta_arch.prototxt beside the graph)",
            )  # fmt: skip
        return
    try:
        message = parse_prototxt(text)
    except EdgezooError as err:
        yield GraphViolation(RULE, "<prototxt>", str(err))
        return
    ssd = message.get("caffe_ssd", [])
    if len(ssd) != 1:
        yield GraphViolation(
            RULE, "<prototxt>", f"edgezoo checks one caffe_ssd head; the prototxt has {len(ssd)}"
        )
        return
    yield from _check_ssd(graph, ssd[0], recorded)


def _check_ssd(
    graph: IndexedGraph, ssd: Mapping[str, list[Any]], recorded: str | None
) -> Iterator[GraphViolation]:
    shapes = graph.shapes
    boxes, classes = ssd.get("box_input", []), ssd.get("class_input", [])
    params = ssd.get("prior_box_param", [])
    if not len(boxes) == len(classes) == len(params) > 0:
        yield GraphViolation(
            RULE, "<prototxt>", f"{len(boxes)} box_input, {len(classes)} class_input and "
            f"{len(params)} prior_box_param: one of each per level",
        )  # fmt: skip
        return
    missing = [name for name in (*boxes, *classes) if shapes.get(name) is None]
    if missing:
        yield GraphViolation(
            RULE, ", ".join(missing), "named by the prototxt but not a tensor of known shape in "
            "the graph: export again, or fix the prototxt's box_input / class_input",
        )  # fmt: skip
        return
    in_size = _in_size(ssd)
    problem = _input_problem(graph, in_size)
    if problem:
        yield GraphViolation(RULE, "in_width/in_height", problem)
    output = ssd.get("detection_output_param", [{}])[0]
    num_classes = output.get("num_classes", [0])[0]
    background = output.get("background_label_id", [0])[0]
    if not 0 <= background < num_classes:
        yield GraphViolation(
            RULE, "detection_output_param", f"background_label_id {background} is not one of "
            f"the {num_classes} classes (SSD counts the background among num_classes)",
        )  # fmt: skip
    for level, (box, cls, param) in enumerate(zip(boxes, classes, params, strict=True)):
        yield from _check_level(
            level, shapes[box], shapes[cls], param, num_classes, in_size, (box, cls)
        )
    if recorded is not None and not problem:
        yield from _check_priors(recorded, params, in_size, [shapes[b][-2:] for b in boxes])


def _check_level(
    level: int,
    box_shape: Sequence[int],
    class_shape: Sequence[int],
    param: Mapping[str, list[Any]],
    num_classes: int,
    in_size: tuple[int, int],
    names: tuple[str, str],
) -> Iterator[GraphViolation]:
    priors = len(caffe_prior_sides(param))
    for name, shape, per_prior in zip(
        names, (box_shape, class_shape), (4, num_classes), strict=True
    ):
        if len(shape) != 4 or shape[1] != priors * per_prior:
            yield GraphViolation(
                RULE, name, f"level {level} has {priors} priors per location, so this head "
                f"needs {priors} x {per_prior} = {priors * per_prior} channels; the graph "
                f"gives {list(shape)}",
            )  # fmt: skip
    if box_shape[-2:] != class_shape[-2:]:
        yield GraphViolation(
            RULE, names[1], f"level {level}'s box and class maps differ in size "
            f"({list(box_shape[-2:])} vs {list(class_shape[-2:])})",
        )  # fmt: skip
    step = param.get("step", [None])[0]
    if step is not None and len(box_shape) == 4:
        spans = (step * box_shape[-2], step * box_shape[-1])
        if any(abs(span - side) > 1e-3 * side for span, side in zip(spans, in_size, strict=True)):
            yield GraphViolation(
                RULE, names[0], f"level {level}'s step {step} x its {box_shape[-2]}x"
                f"{box_shape[-1]} map does not span the {in_size[0]}x{in_size[1]} input: the "
                "priors would sit off their feature-map cells",
            )  # fmt: skip


def _check_priors(
    recorded: str,
    params: Sequence[Mapping[str, list[Any]]],
    in_size: tuple[int, int],
    grid_sizes: Sequence[Sequence[int]],
) -> Iterator[GraphViolation]:
    """TIDL's prior boxes (from the prototxt) against the ones the model was trained with."""
    meta = meta_arch_from_json(recorded)
    grids = [(int(h), int(w)) for h, w in grid_sizes]
    tidl = caffe_prior_boxes(params, in_size, grids)
    model = meta.boxes.anchors(grids).double()
    if tidl.shape != model.shape:
        yield GraphViolation(
            RULE, "prior_box_param", f"the prototxt gives {tidl.shape[0]} prior boxes, the model "
            f"was trained with {model.shape[0]}",
        )  # fmt: skip
        return
    gap = float(torch.max(torch.abs(tidl - model)))
    if gap > PRIOR_TOLERANCE:
        yield GraphViolation(
            RULE, "prior_box_param", f"TIDL's prior boxes differ from the model's by up to "
            f"{gap:.3g} of the image: the device would decode other boxes than the model's",
        )  # fmt: skip


def _in_size(ssd: Mapping[str, list[Any]]) -> tuple[int, int]:
    return int(ssd.get("in_height", [0])[0]), int(ssd.get("in_width", [0])[0])


def _input_problem(graph: IndexedGraph, in_size: tuple[int, int]) -> str | None:
    shape = graph.shapes.get(graph.inputs[0]) if graph.inputs else None
    if shape is None or len(shape) != 4:
        return "the graph has no static NCHW input to compare in_width/in_height with"
    if tuple(shape[-2:]) != in_size:
        return (
            f"the prototxt says {in_size[0]}x{in_size[1]} (in_height x in_width), the graph "
            f"takes {shape[-2]}x{shape[-1]}"
        )
    return None
