"""verify_onnx: check an ONNX graph against TIDL's import rules and list every violation.

The rules come from edgezoo.tidl, in families: graph-level (verify_graph), per operator
(verify_ops), the QAT ranges of Clip graphs (verify_ranges) and the QDQ rules (qdq_rules). A
QAT ("quantized") graph must also carry its own activation ranges (a Clip with power-of-two
bounds after every Conv/Gemm/Add/Concat before the next one) and weights on TIDL's per-tensor
power-of-two grid; a float graph is left to TIDL's calibration.
"""

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import onnx

from edgezoo.export.meta_arch_files import prototxt_beside
from edgezoo.export.qdq_rules import check_qdq_graph, is_qdq_graph
from edgezoo.export.report import GraphViolation, VerifyReport
from edgezoo.export.verify_context import CheckedGraph
from edgezoo.export.verify_graph import check_graph, metadata_problems
from edgezoo.export.verify_meta_arch import check_meta_arch
from edgezoo.export.verify_ops import check_nodes
from edgezoo.export.verify_ranges import check_calibrated, check_input_clipped, check_ranges
from edgezoo.export.verify_widths import check_widths
from edgezoo.onnxgraph.indexed import IndexedGraph
from edgezoo.onnxgraph.io import load_onnx
from edgezoo.onnxgraph.tools import order_problem
from edgezoo.tidl.tensor_bits import TensorBits

__all__ = ["STRUCTURAL_RULES", "structural_violations", "verify_onnx"]

STRUCTURAL_RULES = frozenset(
    {
        "graph-order",
        "tensor-payload",
        "no-outputs",
        "metadata",
        "onnx-checker",
        "opset",
        "shape-inference",
        "clip-bounds",
    }
)
"""Rules whose breach makes a graph something no device (nor its simulation) runs as written,
whatever the quantization: a simulation of such a graph would report agreement on nonsense."""


def structural_violations(proto: onnx.ModelProto) -> list[GraphViolation]:
    """The violations of STRUCTURAL_RULES in a graph (empty: it can be run as written)."""
    report = verify_onnx(proto, quantized=False, input_clipped=False)
    return [v for v in report.violations if v.rule in STRUCTURAL_RULES]


def verify_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    quantized: bool = True,
    input_clipped: bool | None = None,
    allow_uncalibrated: bool = False,
    meta_arch: str | None = None,
) -> VerifyReport:
    """Check a graph (path or ModelProto) against TIDL's rules and report every violation.

    quantized: apply the QAT rules too (power-of-two Clip bounds, every range covered by a Clip,
    weights on TIDL's grid); pass False for a float model that TIDL will calibrate (PTQ).
    input_clipped: require a Clip between the graph input and the first Conv (default: equal to
    quantized; pass False for a QAT model trained with quantize_input=False).
    allow_uncalibrated: do not report the untrained ranges an export recorded in the graph.
    meta_arch: a detector's meta-architecture prototxt text, checked against the graph
    (default for a path: the <stem>_meta_arch.prototxt beside it, when there; a detector
    edgezoo exported is reported without one).
    """
    if isinstance(model, onnx.ModelProto):
        proto, source = model, model.graph.name or "<ModelProto>"
    else:
        proto, source = load_onnx(model), str(model)
        meta_arch = meta_arch if meta_arch is not None else prototxt_beside(Path(model))
    problems = tuple(metadata_problems(proto))
    checked = CheckedGraph(
        graph=IndexedGraph(proto),
        quantized=quantized,
        input_clipped=quantized if input_clipped is None else input_clipped,
        allow_uncalibrated=allow_uncalibrated,
        metadata_problems=problems,
        widths=TensorBits() if problems else TensorBits.of_graph(proto),
        qdq=is_qdq_graph(proto),
        meta_arch=meta_arch,
    )
    return VerifyReport(
        source=source,
        opset=checked.graph.opset,
        quantized=quantized,
        node_counts=dict(Counter(node.op_type for node in proto.graph.node)),
        violations=tuple(_violations(checked)),
    )


def _violations(checked: CheckedGraph) -> Iterator[GraphViolation]:
    """Every violation: graph-level rules first, then node by node, then the QAT rules. A graph
    whose nodes cannot run in order is reported alone: the other rules assume an order."""
    problem = order_problem(checked.graph.proto.graph)
    if problem is not None:
        yield GraphViolation("graph-order", "<graph>", problem)
        return
    yield from check_graph(checked)
    yield from check_nodes(checked)
    yield from check_meta_arch(checked.graph, checked.meta_arch)
    if checked.qdq:
        yield from check_qdq_graph(checked.graph)
    elif checked.quantized:
        yield from check_ranges(checked)
        yield from check_widths(checked)
    if checked.quantized:
        yield from check_calibrated(checked)
    if checked.input_clipped and not checked.qdq:
        yield from check_input_clipped(checked)
