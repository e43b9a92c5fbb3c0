"""Inputs for a graph alone: images from a data set at the graph's input size, or random."""

import math
from collections.abc import Iterator
from itertools import islice

import onnx
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from edgezoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from edgezoo.detection import graph_meta_arch
from edgezoo.errors import SimulationError, UnknownModelError
from edgezoo.tasks import DETECTION, task_of_graph

MAX_IMAGE_ELEMENTS = 3 * 4096 * 4096
"""Largest image (values per input) the simulation allocates batches for."""


def graph_input_shape(proto: onnx.ModelProto) -> tuple[int, ...]:
    """The static (N, C, H, W) of the graph's input; SimulationError for anything else."""
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    shape = tuple(d.dim_value for d in inputs[0].type.tensor_type.shape.dim) if inputs else ()
    if len(inputs) != 1 or len(shape) != 4 or not all(v > 0 for v in shape):
        raise SimulationError(
            f"the graph has {len(inputs)} input(s), the first of shape {list(shape)}: edgezoo "
            "simulates one static NCHW image input, as export_onnx writes it"
        )
    if math.prod(shape[1:]) > MAX_IMAGE_ELEMENTS:
        raise SimulationError(
            f"the graph's input declares {list(shape)}, {math.prod(shape[1:])} values per "
            f"image; edgezoo simulates images of up to {MAX_IMAGE_ELEMENTS} values (about "
            "4096 x 4096 x 3)"
        )
    return shape


def graph_task(proto: onnx.ModelProto) -> str:
    """The task of a bare graph: detection where it records a meta-architecture, else by its
    final ArgMax or its output's rank (tasks.task_of_graph)."""
    if graph_meta_arch(proto) is not None:
        return DETECTION
    argmax = bool(proto.graph.node) and proto.graph.node[-1].op_type == "ArgMax"
    return task_of_graph(len(proto.graph.output[0].type.tensor_type.shape.dim), argmax).name


def graph_normalisation(proto: onnx.ModelProto) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of the zoo model the graph was exported from (its name), else ImageNet's."""
    from edgezoo.registry import preprocessing

    try:
        return preprocessing(proto.graph.name)
    except UnknownModelError:
        return IMAGENET_MEAN, IMAGENET_STD


def graph_batches(
    proto: onnx.ModelProto, data: str | None, batches: int, batch_size: int
) -> Iterator[Tensor]:
    """Input batches for the graph: validation images of `data`, else seeded random normals."""
    _, channels, height, width = graph_input_shape(proto)
    if data is None:
        generator = torch.Generator().manual_seed(0)
        for _ in range(batches):
            yield torch.randn(batch_size, channels, height, width, generator=generator)
        return
    from edgezoo.tasks import build_task_data, get_task

    mean, std = graph_normalisation(proto)
    task = get_task(graph_task(proto))
    dataset = build_task_data(data, task, height, mean, std).val
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=task.collate_fn)
    for images, _ in islice(loader, batches):
        yield images
