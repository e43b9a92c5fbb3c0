"""Run a QDQ graph in onnxruntime's int8 kernels and compare it with a reference, step by step.

onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear (and Add, Concat, pools, Resize)
into integer kernels (QLinearConv, ...): a real integer runtime. Its outputs are compared with
a reference on the graph's last quantized tensors: each output that lies on a grid, and the
input of a final float Conv/Gemm (where an output is float logits, its integer input is what
the runtime quantized). The reference is the QAT model's eval forward (export_onnx) or the
graph's own QDQ semantics, onnxruntime with every fusion off (verify).

Differences of one step are expected where the two round a tie differently: onnxruntime's
kernels requantize with a float multiplier and round half to even, the QAT forward rounds
power-of-two grids as its activation_rounding says, and float32 sums of affine grids differ
from exact integer sums in the last bit.

Larger differences come from the CPU, not the graph: on x86 CPUs without VNNI (AVX2, AVX-512F)
onnxruntime's u8s8 kernels sum pairs of uint8 x int8 products in int16 with saturation
(vpmaddubsw), so a pair above 32767 is cut; onnxruntime's quantization docs recommend 7-bit
weights (reduce_range) there, OpenVINO documents the same "saturation issue". A graph whose
literal QDQ semantics equal the QAT model can then differ by a few steps in the int8 kernels;
`int8_kernels_may_saturate()` says whether this CPU is one of them.
"""

import platform
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgezoo.export.session import onnxruntime_session
from edgezoo.onnxgraph.indexed import IndexedGraph

__all__ = [
    "Probe",
    "ProbeRunner",
    "RuntimeAgreement",
    "agreement",
    "graph_agreement",
    "int8_kernels_may_saturate",
    "probes",
    "qat_probe_values",
    "stack_runs",
]


@dataclass(frozen=True)
class Probe:
    """A compared tensor: its name, its grid step, and whether it holds the model's output
    (else it is the input of the final Conv/Gemm)."""

    tensor: str
    step: float
    model_output: bool


@dataclass(frozen=True)
class RuntimeAgreement:
    """How far onnxruntime's int8 run is from a reference: in steps of each probe's grid, and
    as the share of images (pixels for segmentation) whose predicted class agrees."""

    max_steps: float
    share_within_one_step: float
    top1_agreement: float
    predictions: int
    reference: str
    runtime: str = "onnxruntime int8"
    saturating_cpu: bool = False
    """The runtime was the int8 kernels on a CPU whose u8s8 dot products saturate."""

    def __str__(self) -> str:
        text = (
            f"{self.runtime} vs {self.reference}: max {self.max_steps:g} steps apart, "
            f"{100 * self.share_within_one_step:.3f} % within one step, top-1 agrees on "
            f"{100 * self.top1_agreement:.2f} % of {self.predictions}"
        )
        if self.saturating_cpu:
            text += " (this CPU lacks VNNI: onnxruntime's u8s8 kernels saturate int16 pair sums)"
        return text


@cache
def int8_kernels_may_saturate() -> bool:
    """True on an x86 CPU without VNNI, where onnxruntime's u8s8 kernels saturate pair sums."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return True
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def _grid_step(graph: IndexedGraph, tensor: str) -> float | None:
    """The scale of the DequantizeLinear a tensor comes from (through Flatten/Reshape)."""
    producers = graph.producer_nodes
    while tensor in producers:
        node = producers[tensor]
        if node.op_type == "DequantizeLinear":
            return float(graph.constants[node.input[1]])
        if node.op_type not in ("Flatten", "Reshape"):
            return None
        tensor = node.input[0]
    return None


def probes(proto: onnx.ModelProto) -> list[Probe]:
    """The tensors to compare: each graph output on a grid, else the grid input of the final
    Conv/Gemm that computes it (looking through a final ArgMax)."""
    graph = IndexedGraph(proto)
    producers = graph.producer_nodes
    found = []
    for output in proto.graph.output:
        tensor = output.name
        node = producers.get(tensor)
        if node is not None and node.op_type == "ArgMax":
            tensor, node = node.input[0], producers.get(node.input[0])
        step = _grid_step(graph, tensor)
        if step is not None:
            found.append(Probe(tensor, step, True))
        elif node is not None and node.op_type in ("Conv", "Gemm"):
            step = _grid_step(graph, node.input[0])
            if step is not None:
                found.append(Probe(node.input[0], step, False))
    return found


class ProbeRunner:
    """One onnxruntime session over a graph with its probes as extra outputs: int8 kernels when
    optimize, the graph's literal QDQ semantics (every fusion off) otherwise."""

    def __init__(self, proto: onnx.ModelProto, probe_list: list[Probe], optimize: bool) -> None:
        extended = onnx.ModelProto()
        extended.CopyFrom(proto)
        self.outputs = [o.name for o in proto.graph.output]
        for probe in probe_list:
            if probe.tensor not in self.outputs:
                extended.graph.output.append(
                    helper.make_tensor_value_info(probe.tensor, TensorProto.FLOAT, None)
                )
        self.probe_list = probe_list
        self.session = onnxruntime_session(extended, optimize=optimize)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(graph outputs, probe values) of one run."""
        names = [o.name for o in self.session.get_outputs()]
        values = dict(zip(names, self.session.run(None, {self.input_name: batch}), strict=True))
        return [values[n] for n in self.outputs], [values[p.tensor] for p in self.probe_list]


def _labels(values: np.ndarray) -> np.ndarray:
    """Predicted classes: ArgMax outputs as they are, else the argmax over the channel axis."""
    if np.issubdtype(values.dtype, np.integer):
        return values.reshape(values.shape[0], -1)
    return values.argmax(axis=1).reshape(values.shape[0], -1)


def agreement(
    probe_list: list[Probe],
    runtime: tuple[list[np.ndarray], list[np.ndarray]],
    reference: tuple[list[np.ndarray], list[np.ndarray]],
    reference_name: str,
    fused: bool = True,
) -> RuntimeAgreement:
    """Compare two (outputs, probe values) runs of the same images; `fused`: the runtime run
    used onnxruntime's int8 kernels, else the graph's literal QDQ semantics."""
    apart = [
        np.abs(np.asarray(r, np.float64) - np.asarray(q, np.float64).reshape(r.shape)) / p.step
        for p, r, q in zip(probe_list, runtime[1], reference[1], strict=True)
    ]
    flat = np.concatenate([a.ravel() for a in apart]) if apart else np.zeros(0)
    labels = [
        (_labels(r), _labels(np.asarray(q))) for r, q in zip(runtime[0], reference[0], strict=True)
    ]
    agree = sum(int((a == b).sum()) for a, b in labels)
    total = sum(a.size for a, _ in labels)
    return RuntimeAgreement(
        max_steps=float(flat.max(initial=0.0)),
        share_within_one_step=float((flat <= 1.0 + 1e-6).mean()) if flat.size else 1.0,
        top1_agreement=agree / total if total else 1.0,
        predictions=total,
        reference=reference_name,
        runtime="onnxruntime int8" if fused else "QDQ semantics (onnxruntime, fusions off)",
        saturating_cpu=fused and int8_kernels_may_saturate(),
    )


def qat_probe_values(
    model, example, probe_list: list[Probe]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(outputs, probe values) of the QAT model's eval forward on `example`: a probe that is
    the graph output is the model's output; one before a final Conv/Gemm is that unit's
    input, read by a forward hook."""
    import torch

    from edgezoo.quantization.weight_layers import QuantWeightMixin

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    units = [m for m in model.modules() if isinstance(m, QuantWeightMixin)]
    handles = [
        unit.register_forward_hook(lambda _, args, out: seen.append((args[0], out)))
        for unit in units
    ]
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
    final_input = next(
        (x for x, out in reversed(seen) if out.shape == output.shape and torch.equal(out, output)),
        None,
    )
    values = []
    for probe in probe_list:
        source = output if probe.model_output or final_input is None else final_input
        values.append(source.detach().cpu().double().numpy())
    return [output.detach().cpu().double().numpy()], values


def graph_agreement(proto: onnx.ModelProto, images: int = 8, seed: int = 0) -> RuntimeAgreement:
    """onnxruntime's int8 kernels against the graph's literal QDQ semantics (every fusion off),
    on seeded random normal images at the graph's input shape, one at a time."""
    initializers = {init.name for init in proto.graph.initializer}
    (graph_input,) = [i for i in proto.graph.input if i.name not in initializers]
    shape = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    generator = np.random.default_rng(seed)
    probe_list = probes(proto)
    int8, literal = (ProbeRunner(proto, probe_list, optimize) for optimize in (True, False))
    runtime, reference = [], []
    for _ in range(images):
        batch = generator.standard_normal(shape).astype(np.float32)
        runtime.append(int8(batch))
        reference.append(literal(batch))
    return agreement(probe_list, stack_runs(runtime), stack_runs(reference), "the QDQ graph")


def stack_runs(runs: list[tuple[list, list]]) -> tuple[list, list]:
    """Per-image (outputs, probe values) runs as one run of batched arrays."""
    outputs = [np.concatenate(parts) for parts in zip(*(run[0] for run in runs), strict=True)]
    values = [np.concatenate(parts) for parts in zip(*(run[1] for run in runs), strict=True)]
    return outputs, values
