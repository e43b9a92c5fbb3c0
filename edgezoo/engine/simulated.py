"""Accuracy of an exported graph as TIDL's integer arithmetic would compute it."""

import os
from itertools import islice

import onnx
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from edgezoo.detection import graph_meta_arch
from edgezoo.errors import UsageError
from edgezoo.onnxgraph import load_onnx
from edgezoo.onnxgraph.tools import without_argmax
from edgezoo.simulation.simulate import TIDLSimulator
from edgezoo.tasks import get_task


def simulated_metrics(
    model: str | os.PathLike | onnx.ModelProto,
    dataset: Dataset,
    task: str,
    num_classes: int,
    *,
    batch_size: int = 64,
    max_batches: int | None = None,
    ignore_index: int | None = 255,
    progress: bool = True,
) -> dict[str, float]:
    """The task's metrics (top-1 / mIoU, loss) of the graph run in TIDL's integer arithmetic.

    An appended ArgMax is left out, so the loss and top-5 come from the simulated logits.
    """
    proto = without_argmax(model if isinstance(model, onnx.ModelProto) else load_onnx(model))
    _check_fits(proto, dataset, num_classes)
    simulator = TIDLSimulator(proto)
    task = get_task(task).bind_graph(proto)
    names = [output.name for output in proto.graph.output]
    meter = task.make_meter(num_classes, ignore_index)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=task.collate_fn)
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    batches = islice(loader, total)
    for images, targets in tqdm(batches, total=total, desc="simulate", disable=not progress):
        outputs = [torch.from_numpy(array).float() for array in simulator(images)]
        logits = task.outputs(
            outputs[0] if len(outputs) == 1 else dict(zip(names, outputs, strict=True))
        )
        loss = task.loss(logits, targets, ignore_index, label_smoothing=0.0)
        meter.update(logits, targets, loss)
    return meter.compute()


def _static_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _check_fits(proto: onnx.ModelProto, dataset: Dataset, num_classes: int) -> None:
    """Refuse a graph whose input size or class count is not the evaluation's (a graph of
    another model or input size would give figures that mean nothing)."""
    image, _ = dataset[0]
    expected = [*image.shape]
    declared = _static_dims(proto.graph.input[0])[1:]
    if len(declared) != len(expected) or any(
        d is not None and d != e for d, e in zip(declared, expected, strict=False)
    ):
        raise UsageError(
            f"the graph takes inputs of {declared} (channels, height, width), the evaluation "
            f"data is {expected}: export the model at this input size (--input-size), or "
            "evaluate the graph of this model"
        )
    meta = graph_meta_arch(proto)
    if meta is not None and meta.num_classes != num_classes:
        raise UsageError(
            f"the detector's graph has {meta.num_classes} classes, the evaluation has "
            f"{num_classes}: pass the graph exported from this model and checkpoint"
        )
    classes = _static_dims(proto.graph.output[0])[1:2] if len(proto.graph.output) == 1 else []
    if classes and classes[0] is not None and classes[0] != num_classes:
        raise UsageError(
            f"the graph outputs {classes[0]} classes, the evaluation has {num_classes}: pass "
            "the graph exported from this model and checkpoint"
        )
