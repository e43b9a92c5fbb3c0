"""Accuracy of an exported graph as TIDL's integer arithmetic would compute it."""

import os
from itertools import islice

import onnx
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from edgezoo.engine.metrics import make_meter
from edgezoo.export.graph_tools import without_argmax
from edgezoo.export.verify import load_onnx
from edgezoo.simulation.simulate import TIDLSimulator


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
    simulator = TIDLSimulator(proto)
    meter = make_meter(task, num_classes, ignore_index)
    loader = DataLoader(dataset, batch_size=batch_size)
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    batches = islice(loader, total)
    for images, targets in tqdm(batches, total=total, desc="simulate", disable=not progress):
        (logits,) = simulator(images)
        logits = torch.from_numpy(logits).float()
        loss = F.cross_entropy(
            logits, targets, ignore_index=-100 if ignore_index is None else ignore_index
        )
        meter.update(logits, targets, loss)
    return meter.compute()
