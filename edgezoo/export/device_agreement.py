"""What the device would compute against what PyTorch computes: onnxruntime parity of the float
graph, TIDL's integer simulation of a Clip graph, onnxruntime's int8 kernels on a QDQ graph."""

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import onnx
from torch import Tensor, nn

from edgezoo.errors import ExportVerificationError, SimulationError
from edgezoo.export.graph_passes import INPUT_NAME
from edgezoo.export.qdq_check import (
    ProbeRunner,
    RuntimeAgreement,
    agreement,
    probes,
    qat_probe_values,
    stack_runs,
)
from edgezoo.export.qdq_rules import is_qdq_graph
from edgezoo.export.report import ExportReport
from edgezoo.export.session import onnxruntime_session
from edgezoo.module_state import kept_modes
from edgezoo.onnxgraph.tools import without_argmax
from edgezoo.simulation import parity_report, simulate_tidl
from edgezoo.simulation.runner import ASSUMED_OPS

__all__ = [
    "int8_agreement",
    "integer_parity",
    "runtime_agreements",
    "runtime_parity",
    "with_device_figures",
]

logger = logging.getLogger(__name__)


_QAT_CHUNK = 32


def integer_parity(
    proto: onnx.ModelProto, example: Tensor, quantized_output: Tensor | Sequence[Tensor]
) -> tuple[float, float]:
    """How far TIDL's integer arithmetic (simulate_tidl) is from the QAT model's eval outputs
    (one tensor, or one per graph output): (max difference in output steps over every output,
    share of output elements that differ)."""
    expected = [quantized_output] if isinstance(quantized_output, Tensor) else quantized_output
    simulated = simulate_tidl(proto, example.detach().cpu(), return_integers=True)
    apart = [
        np.abs(want.detach().cpu().double().numpy() * device.scale - device.integers).ravel()
        for want, device in zip(expected, simulated, strict=True)
    ]
    every = np.concatenate(apart)
    return float(every.max(initial=0.0)), float((every > 0).mean()) if every.size else 0.0


def with_device_figures(
    report: ExportReport,
    proto: onnx.ModelProto,
    argmax: bool,
    example: Tensor,
    quantized_output: Sequence[Tensor],
    model: nn.Module,
) -> ExportReport:
    """The report with what the device would compute against the QAT model: the TIDL integer
    simulation for a Clip graph, onnxruntime's int8 kernels for a QDQ graph."""
    if is_qdq_graph(proto):
        semantics, int8 = runtime_agreements(proto, model, example)
        return dataclasses.replace(report, int8=int8, qdq_semantics=semantics)
    return _with_integer_figure(report, proto, argmax, example, quantized_output)


def int8_agreement(
    proto: onnx.ModelProto, model: nn.Module, images: Tensor, fused: bool = True
) -> RuntimeAgreement:
    """onnxruntime on a QDQ graph against the QAT model's eval forward, one image at a time
    (the graph's static batch): its int8 kernels when `fused`, else the graph's literal QDQ
    semantics (every fusion off), which for power-of-two grids must agree exactly."""
    return _agreements(proto, model, images, (fused,))[0]


def runtime_agreements(
    proto: onnx.ModelProto, model: nn.Module, images: Tensor
) -> tuple[RuntimeAgreement, RuntimeAgreement]:
    """(QDQ semantics, int8 kernels) against one QAT reference run: int8_agreement both ways."""
    semantics, int8 = _agreements(proto, model, images, (False, True))
    return semantics, int8


def _agreements(
    proto: onnx.ModelProto, model: nn.Module, images: Tensor, fused_modes: tuple[bool, ...]
) -> list[RuntimeAgreement]:
    probe_list = probes(proto)
    images = images.detach().cpu()
    with kept_modes(model):
        model.eval()
        reference = stack_runs(
            [qat_probe_values(model, chunk, probe_list) for chunk in images.split(_QAT_CHUNK)]
        )
    results = []
    for fused in fused_modes:
        runner = ProbeRunner(proto, probe_list, optimize=fused)
        runtime = stack_runs([runner(image.numpy()) for image in images.split(1)])
        results.append(agreement(probe_list, runtime, reference, "the QAT model", fused))
    return results


def _with_integer_figure(
    report: ExportReport,
    proto: onnx.ModelProto,
    argmax: bool,
    example: Tensor,
    quantized_output: Sequence[Tensor],
) -> ExportReport:
    """The report with integer_parity of the graph's logits, or, for a graph the simulation
    does not define (e.g. a QAT model trained without an input range), why it was not run."""
    graph = without_argmax(proto) if argmax else proto
    try:
        steps, share = integer_parity(graph, example, quantized_output)
    except SimulationError as err:
        logger.warning("no integer simulation of this graph: %s", err)
        return dataclasses.replace(report, integer_not_simulated=str(err))
    first = None if steps == 0 else _first_differing_layer(graph, example)
    assumed = sorted({n.op_type for n in graph.graph.node} & ASSUMED_OPS)
    return dataclasses.replace(
        report,
        integer_max_steps=steps,
        integer_share_differing=share,
        integer_first_difference=first,
        integer_assumed_ops=tuple(assumed),
    )


def _first_differing_layer(proto: onnx.ModelProto, example: Tensor) -> str | None:
    """The first node whose integers differ from QAT's arithmetic on the graph, described."""
    layers = parity_report(proto, [example.detach().cpu()]).layers
    layer = next((layer for layer in layers if layer.differing), None)
    if layer is None:
        return None
    return (
        f"{layer.node} ({layer.op}), {layer.max_steps:g} steps on "
        f"{100 * layer.share_differing:.3g} % of its elements"
    )


def runtime_parity(
    proto: onnx.ModelProto, example: Tensor, reference: Tensor | Sequence[Tensor]
) -> tuple[float, float]:
    """Max absolute and relative (to max|reference| of that output) difference of onnxruntime
    vs PyTorch, over every graph output."""
    references = [reference] if isinstance(reference, Tensor) else reference
    session = onnxruntime_session(proto, optimize=False)
    outputs = session.run(None, {INPUT_NAME: example.cpu().numpy()})
    worst = (0.0, 0.0)
    for output, want in zip(outputs, references, strict=True):
        expected = want.detach().cpu().numpy().astype(np.float64)
        if output.shape != expected.shape:
            raise ExportVerificationError(
                f"onnxruntime output shape {output.shape} differs from PyTorch's {expected.shape}"
            )
        abs_diff = float(np.abs(output.astype(np.float64) - expected).max(initial=0.0))
        scale = float(np.abs(expected).max(initial=0.0))
        relative = abs_diff / scale if scale > 0 else abs_diff
        worst = (max(worst[0], abs_diff), max(worst[1], relative))
    return worst
