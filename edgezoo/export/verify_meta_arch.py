"""Checks of a detector's meta-architecture prototxt (caffe_ssd or tidl_yolo) against its
graph (rule `meta-arch`):
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
    heads = {kind: message.get(kind, []) for kind in ("caffe_ssd", "tidl_yolo")}
    if sorted(len(found) for found in heads.values()) != [0, 1]:
        yield GraphViolation(
            RULE, "<prototxt>", "edgezoo checks one caffe_ssd or one tidl_yolo head; the "
            f"prototxt has {', '.join(f'{len(v)} {k}' for k, v in heads.items())}",
        )  # fmt: skip
        return
    if heads["caffe_ssd"]:
        yield from _check_ssd(graph, heads["caffe_ssd"][0], recorded)
    else:
        yield from _check_yolo(graph, heads["tidl_yolo"][0], recorded)


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


def _check_yolo(
    graph: IndexedGraph, yolo: Mapping[str, list[Any]], recorded: str | None
) -> Iterator[GraphViolation]:
    """tidl_yolo: every level's input a tensor of anchors x (5 + classes) channels whose
    anchors (YOLOX: the stride) span the input; the classes the model was trained with."""
    shapes, levels = graph.shapes, yolo.get("yolo_param", [])
    inputs = [level.get("input", [""])[0] for level in levels]
    missing = [name for name in inputs if shapes.get(name) is None]
    if not levels or missing:
        yield GraphViolation(
            RULE, ", ".join(missing) or "yolo_param", "named by the prototxt's yolo_param but "
            "not a tensor of known shape in the graph (or no yolo_param at all)",
        )  # fmt: skip
        return
    in_size = _in_size(yolo)
    problem = _input_problem(graph, in_size)
    if problem:
        yield GraphViolation(RULE, "in_width/in_height", problem)
    num_classes = yolo.get("detection_output_param", [{}])[0].get("num_classes", [0])[0]
    for level, (name, param) in enumerate(zip(inputs, levels, strict=True)):
        shape, anchors = shapes[name], len(param.get("anchor_width", []))
        if len(shape) != 4 or shape[1] != anchors * (5 + num_classes):
            yield GraphViolation(
                RULE, name, f"level {level} has {anchors} anchor(s), so it needs {anchors} x "
                f"(4 + 1 + {num_classes}) = {anchors * (5 + num_classes)} channels; the graph "
                f"gives {list(shape)}",
            )  # fmt: skip
        elif not problem and _yolox(yolo) and _off_stride(param, shape, in_size):
            yield GraphViolation(
                RULE, name, f"level {level}'s anchor {param['anchor_width'][0]} is not its "
                f"stride (the input over the {shape[-2]}x{shape[-1]} map), which YOLOX "
                "decoding multiplies by",
            )  # fmt: skip
    if recorded is not None:
        meta = meta_arch_from_json(recorded)
        if meta.num_classes != num_classes or tuple(inputs) != tuple(meta.head_outputs):
            yield GraphViolation(
                RULE, "tidl_yolo", f"the prototxt reads {inputs} with {num_classes} classes; "
                f"the model outputs {list(meta.head_outputs)} with {meta.num_classes}",
            )  # fmt: skip


def _yolox(yolo: Mapping[str, list[Any]]) -> bool:
    output = yolo.get("detection_output_param", [{}])[0]
    return output.get("code_type", [""])[0] == "CODE_TYPE_YOLO_X"


def _off_stride(param: Mapping[str, list[Any]], shape: Sequence[int], in_size) -> bool:
    strides = (in_size[0] / shape[-2], in_size[1] / shape[-1])
    anchors = (param.get("anchor_height", [0])[0], param.get("anchor_width", [0])[0])
    return any(abs(a - s) > 1e-3 * s for a, s in zip(anchors, strides, strict=True))


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
