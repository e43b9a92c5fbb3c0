"""export_onnx: a float or QAT edgezoo model -> one verified, TIDL-ready ONNX file plus configs.

The QAT path exports `convert_to_deploy(q)`: a plain float network whose Convs carry the folded
weights the QAT forward used (on the power-of-two grid), with every activation range as a Clip
leaf module. torch's TorchScript exporter (dynamo=False) writes it with BN folded and each Clip
as one ONNX Clip. onnxsim (its range optimisation off: it deletes Clips it proves dead on the
float graph) and small passes clean it: Constant nodes become initializers, Identity nodes go,
and QAT weights are kept fixed under TIDL's re-quantization (weight_grid.py). ONNX shape
inference records every shape; the graph is verified (verify.py) and run in onnxruntime against
the PyTorch model before it is written.
"""

import dataclasses
import functools
import io
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from edgezoo.errors import (
    ExportVerificationError,
    QuantizationConfigError,
    SimulationError,
    TIDLRuleError,
    UncalibratedRangesError,
    UsageError,
)
from edgezoo.export.qdq import QDQ_MIN_OPSET, to_qdq
from edgezoo.export.qdq_check import (
    ProbeRunner,
    RuntimeAgreement,
    agreement,
    probes,
    qat_probe_values,
    stack_runs,
)
from edgezoo.export.qdq_rules import is_qdq_graph
from edgezoo.export.report import ExportReport, VerifyReport
from edgezoo.export.tidl_config import TIDLCompilation, TIDLInputSpec, write_tidl_configs
from edgezoo.export.verify import verify_onnx
from edgezoo.export.verify_ranges import input_range, normalised_input_range
from edgezoo.export.weight_grid import nudged_entries
from edgezoo.fileio import atomic_path
from edgezoo.onnxgraph.tools import infer_shapes, without_argmax
from edgezoo.quantization import (
    QUANT_WRAPPERS,
    Clip,
    GraphQuantization,
    convert_to_deploy,
    graph_quantization,
    is_quantized,
    named_activation_ranges,
)
from edgezoo.quantization.grid import BIAS_JOINT, HALF_EVEN
from edgezoo.registry import model_info
from edgezoo.simulation import parity_report, simulate_tidl
from edgezoo.targets import (
    CLIP_FORMAT,
    QDQ_FORMAT,
    TargetDevice,
    check_export_format,
    check_scheme,
    resolve_target,
)
from edgezoo.text import preview
from edgezoo.tidl import rules
from edgezoo.version import __version__

__all__ = ["ExportPlan", "export_onnx", "export_plan", "int8_agreement", "onnxruntime_session"]

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "output"
_LOGITS_NAME = "logits"
_QAT_CHUNK = 32


_LEGACY_POSITIONAL = ("example_input", "opset", "simplify", "argmax", "input_size", "strict")


def _keyword_options(export: Callable[..., ExportReport]) -> Callable[..., ExportReport]:
    """export_onnx's options go by keyword after `path`; the positional form and `format=`
    (now export_format=) of the previous release still work, with a DeprecationWarning."""

    @functools.wraps(export)
    def call(model: nn.Module, path: str | os.PathLike, *positional: Any, **options: Any):
        if len(positional) > len(_LEGACY_POSITIONAL):
            raise UsageError(
                f"export_onnx takes model and path by position, its options by keyword "
                f"({', '.join(_LEGACY_POSITIONAL)}, ...); got {2 + len(positional)} positional"
            )
        for name, value in zip(_LEGACY_POSITIONAL, positional, strict=False):
            if name in options:
                raise UsageError(f"export_onnx got {name} both by position and by keyword")
            options[name] = value
        if positional:
            warnings.warn(
                "pass export_onnx's options by keyword after path (example_input=..., "
                "opset=...); positional options are deprecated",
                DeprecationWarning,
                stacklevel=2,
            )
        if "format" in options:
            warnings.warn(
                "export_onnx(format=...) is now export_format=...", DeprecationWarning, stacklevel=2
            )
            options["export_format"] = options.pop("format")
        return export(model, path, **options)

    return call


@_keyword_options
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_input: Tensor | None = None,
    opset: int | None = None,
    simplify: bool = True,
    argmax: bool = False,
    input_size: Sequence[int] | None = None,
    strict: bool = True,
    model_name: str | None = None,
    task: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    write_configs: bool = True,
    parity_tolerance: float = 1e-4,
    allow_uncalibrated: bool = False,
    export_format: str | None = None,
    target: str | None = None,
) -> ExportReport:
    """Export a float edgezoo model or a QAT wrapper to one self-contained, verified ONNX file.

    model: a float model, or a QuantTrainModule / QuantCalibrateModule / QuantTestModule or its
    `.module` (its deploy form is exported; the QAT model is not changed). example_input, or
    input_size as (H, W) or (C, H, W), or model_name's default size fixes the static input shape.
    target: the TI device (edgezoo.targets.TARGETS; default the QAT config's target, else
    TDA4VM). export_format: "clip" (TDA4VM's QAT Clip graph) or "qdq" (QuantizeLinear /
    DequantizeLinear with integer weights, for prequantized import); default: the target's.
    opset: 11 (TI's QAT recipe; 13 for QDQ) to 17, through the TorchScript exporter; other
    values raise TIDLRuleError. argmax: append ArgMax(axis=1, keepdims=1) for segmentation.
    strict: raise ExportVerificationError (with `.report`) and write nothing when the graph
    breaks a TIDL rule, onnxruntime differs from PyTorch or the integers disagree; False
    writes it anyway and returns the failing report. model_name / task / preprocessing feed the
    TIDL files (beside the ONNX unless write_configs=False; else the task is guessed and
    ImageNet normalisation assumed). Ranges that never saw data raise UncalibratedRangesError
    unless allow_uncalibrated (the graph records how many). Modes are restored afterwards.
    """
    path = Path(path)
    _refuse_non_finite(model)
    wrapped, settings, quantized = _model_kind(model)
    plan = export_plan(settings, target, export_format, opset)
    untrained = _untrained_ranges(model, allow_uncalibrated) if wrapped else []
    info = None if model_name is None else model_info(model_name)
    example = _example_input(model, example_input, input_size, info)
    reference, quantized_output, proto = _reference_and_graph(model, example, plan.opset, wrapped)
    proto, aligned, parity = _graph_for_plan(
        proto, example, reference, simplify, argmax, settings, plan, quantized
    )
    spec = _input_spec(example, reference, info, task, preprocessing, argmax)
    _stamp(proto, model_name or type(model).__name__, quantized, len(untrained), settings, plan)
    _record_normalisation(proto, spec)
    clipped_input = wrapped and _quantizes_input(model)
    verification = verify_onnx(proto, quantized, clipped_input, allow_uncalibrated)
    measured = (tuple(example.shape), parity, parity_tolerance, tuple(aligned), plan.target.name)
    report = _report(proto, path, verification, *measured)
    if quantized_output is not None:
        report = _with_device_figures(report, proto, argmax, example, quantized_output, model)
    _write(proto, report, strict)
    if write_configs:
        files = write_tidl_configs(path, spec, quantized, plan.compilation(quantized, settings))
        report = dataclasses.replace(report, config_files=files)
    logger.info("exported %s", report)
    return report


def _model_kind(model: nn.Module) -> tuple[bool, GraphQuantization | None, bool]:
    """Whether the model is a QAT model (a wrapper or its module), its graph quantization, and
    whether the graph will hold ranges (a QAT model, or a float one with Clip layers)."""
    wrapped = isinstance(model, QUANT_WRAPPERS) or is_quantized(model)
    settings = graph_quantization(model) if wrapped else None
    quantized = wrapped or any(isinstance(m, Clip) for m in model.modules())
    return wrapped, settings, quantized


def _graph_for_plan(
    proto: onnx.ModelProto,
    example: Tensor,
    reference: Tensor,
    simplify: bool,
    argmax: bool,
    settings,
    plan: "ExportPlan",
    quantized: bool,
) -> tuple[onnx.ModelProto, list[str], tuple[float, float]]:
    """The finished graph in the plan's format: simplified, grid-aligned (Clip) or rewritten
    as QDQ, with the grid-aligned layers and the onnxruntime parity."""
    proto, parity = _finished_graph(proto, example, reference, simplify, argmax)
    if plan.export_format == QDQ_FORMAT and quantized:
        proto = _infer_shapes(to_qdq(proto, settings.activation_bits, settings.activation_scales))
        return proto, [], parity  # the QDQ rewrite writes the QAT integers themselves
    return proto, _nudged_layers(proto.graph, settings) if settings else [], parity


@dataclass(frozen=True)
class ExportPlan:
    """Where and how a graph is exported: the device, the format and the opset."""

    target: TargetDevice
    export_format: str
    opset: int

    def compilation(self, quantized: bool, settings: GraphQuantization | None) -> TIDLCompilation:
        """The TIDL compile settings of this plan for the exported graph."""
        bits = settings.activation_bits if settings and quantized else 8
        affine = bool(settings and (settings.per_channel_weights or settings.affine))
        return TIDLCompilation(self.target, quantized, self.export_format, bits, affine)


def export_plan(
    settings: GraphQuantization | None,
    target: str | None = None,
    export_format: str | None = None,
    opset: int | None = None,
) -> ExportPlan:
    """Resolve the device, format and opset of an export; refuse a combination that the
    device, the format or the model's quantization scheme rules out."""
    device = resolve_target(target or (settings.target if settings else None))
    if settings is None:
        if export_format == QDQ_FORMAT:
            raise QuantizationConfigError(
                "a float model has no QDQ form: wrap it for QAT (QuantTrainModule) or "
                "calibrate it (QuantCalibrateModule) first, or export it as a float graph for "
                "TIDL's own calibration (export_format=None)"
            )
        export_format = CLIP_FORMAT
    else:
        export_format = check_export_format(device, export_format)
        # A device that runs these schemes imports QDQ graphs only, so no Clip graph has them.
        check_scheme(device, settings.per_channel_weights, settings.affine)
        if export_format == QDQ_FORMAT:
            _check_qdq_arithmetic(settings, device)
    if opset is None:
        opset = QDQ_MIN_OPSET if export_format == QDQ_FORMAT else rules.EXPORT_OPSETS[0]
    _check_opset(opset)
    if export_format == QDQ_FORMAT and opset < QDQ_MIN_OPSET:
        raise TIDLRuleError(
            f"a QDQ export needs opset {QDQ_MIN_OPSET} or later (per-channel DequantizeLinear), "
            f"got {opset}"
        )
    return ExportPlan(device, export_format, opset)


def _check_qdq_arithmetic(settings: GraphQuantization, device: TargetDevice) -> None:
    """Refuse a QDQ export of a model whose arithmetic a QDQ graph cannot carry: its
    QuantizeLinear rounds half to even and its biases are int32 on the joint grid."""
    wrong = []
    if settings.activation_rounding != HALF_EVEN:
        wrong.append(
            f"activations rounded {settings.activation_rounding} (QuantizeLinear: half_even)"
        )
    if settings.bias_rule != BIAS_JOINT:
        wrong.append(f"bias rule {settings.bias_rule} (QDQ's int32 biases: joint)")
    if wrong:
        raise QuantizationConfigError(
            f"this model was trained with {' and '.join(wrong)}, so a QDQ graph would not "
            f"compute what it computes: export_format='clip' for {device.name}, or train with "
            f"QuantizationConfig(target={device.name!r}, activation_rounding='half_even', "
            "bias_rule='joint')"
        )


def _report(
    proto: onnx.ModelProto,
    path: Path,
    verification: VerifyReport,
    input_shape: tuple[int, ...],
    parity: tuple[float, float],
    parity_tolerance: float,
    aligned_weights: tuple[str, ...],
    target: str,
) -> ExportReport:
    """What the export measured and verified of the graph it is about to write."""
    return ExportReport(
        path=path,
        opset=verification.opset,
        quantized=verification.quantized,
        input_shape=input_shape,
        verification=dataclasses.replace(verification, source=str(path)),
        parity_max_abs_diff=parity[0],
        parity_max_rel_diff=parity[1],
        parity_tolerance=parity_tolerance,
        clip_count=_count(proto, "Clip"),
        aligned_weights=aligned_weights,
        target=target,
    )


def integer_parity(
    proto: onnx.ModelProto, example: Tensor, quantized_output: Tensor
) -> tuple[float, float]:
    """How far TIDL's integer arithmetic (simulate_tidl) is from the QAT model's eval output:
    (max difference in output steps, share of output elements that differ)."""
    (device,) = simulate_tidl(proto, example.detach().cpu(), return_integers=True)
    qat = quantized_output.detach().cpu().double().numpy() * device.scale
    apart = np.abs(qat - device.integers)
    return float(apart.max(initial=0.0)), float((apart > 0).mean()) if apart.size else 0.0


def _with_device_figures(
    report: ExportReport,
    proto: onnx.ModelProto,
    argmax: bool,
    example: Tensor,
    quantized_output: Tensor,
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
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        reference = stack_runs(
            [qat_probe_values(model, chunk, probe_list) for chunk in images.split(_QAT_CHUNK)]
        )
    finally:
        for module, training in modes.items():
            module.train(training)
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
    quantized_output: Tensor,
) -> ExportReport:
    """The report with integer_parity of the graph's logits; unchanged (logged) for a graph
    TIDL's arithmetic is not defined on (e.g. a QAT model trained without an input range)."""
    graph = without_argmax(proto) if argmax else proto
    try:
        steps, share = integer_parity(graph, example, quantized_output)
    except SimulationError as err:
        logger.info("no integer simulation of this graph: %s", err)
        return report
    first = None if steps == 0 else _first_differing_layer(graph, example)
    return dataclasses.replace(
        report,
        integer_max_steps=steps,
        integer_share_differing=share,
        integer_first_difference=first,
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


def _finished_graph(
    proto: onnx.ModelProto,
    example: Tensor,
    reference: Tensor,
    simplify: bool,
    argmax: bool,
) -> tuple[onnx.ModelProto, tuple[float, float]]:
    """The cleaned graph with its shapes and the parity with PyTorch (before an ArgMax)."""
    proto = _clean_graph(proto, simplify)
    _resize_nearest_modes(proto.graph)
    parity = _parity(proto, example, reference)
    if argmax:
        proto = _append_argmax(proto)
    return _infer_shapes(proto), parity


def _write(proto: onnx.ModelProto, report: ExportReport, strict: bool) -> None:
    """Save the graph, unless strict and it is not TIDL-ready (then raise, writing nothing)."""
    if strict and not report.ok:
        raise ExportVerificationError(_failure_message(report), report.verification)
    # Atomic: a full disk or a kill leaves the previous file intact, never a broken one.
    with atomic_path(report.path) as partial:
        onnx.save_model(proto, partial, save_as_external_data=False)


def _refuse_non_finite(model: nn.Module) -> None:
    """A NaN or infinite weight or buffer would export a graph whose every output it reaches is
    meaningless: refuse it, naming the tensor."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ExportVerificationError(
                f"{name} holds NaN or infinite values: the model cannot be exported; load a "
                "checkpoint from before training diverged (or lower the learning rate)"
            )


def _untrained_ranges(model: nn.Module, allow_uncalibrated: bool) -> list[str]:
    """The ranges of a QAT model that never saw data; raise unless the caller allows them."""
    source = getattr(model, "module", model)
    untrained = [n for n, p in named_activation_ranges(source).items() if not p.trained]
    if not untrained:
        return []
    shown = preview(untrained, 4)
    if not allow_uncalibrated:
        raise UncalibratedRangesError(
            f"{len(untrained)} of the model's activation ranges never saw data ({shown}): their "
            "clips are the initial +/-8, not the model's ranges, so the graph would not be "
            "TIDL-ready. Train (QAT) or calibrate first, or load a QAT checkpoint; "
            "allow_uncalibrated=True (--allow-uncalibrated) exports it for graph tests only"
        )
    logger.warning("exporting %d untrained activation ranges (%s)", len(untrained), shown)
    return untrained


def onnxruntime_session(
    model: str | os.PathLike | onnx.ModelProto, optimize: bool = True, threads: int = 0
) -> ort.InferenceSession:
    """A CPU onnxruntime session for an ONNX file or ModelProto, with warnings silenced.

    optimize=False runs the graph exactly as written (no ORT fusions); threads=0 lets ORT pick.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _reference_and_graph(
    model: nn.Module, example: Tensor, opset: int, wrapped: bool
) -> tuple[Tensor, Tensor | None, onnx.ModelProto]:
    """PyTorch's output of the model the graph is exported from (for QAT its deploy form: the
    float graph's arithmetic), a QAT model's quantized eval output (None for a float model) and
    the exported graph; modes restored."""
    modes = {module: module.training for module in model.modules()}
    quantized = None
    try:
        model.eval()
        with torch.no_grad():
            if wrapped:
                quantized = _single_output(model(example))
                deploy = convert_to_deploy(model)
            else:
                deploy = model
            reference = deploy(example)
        proto = _torchscript_export(deploy, example, opset)
    finally:
        for module, training in modes.items():
            module.train(training)
    return _single_output(reference), quantized, proto


def _check_opset(opset: int) -> None:
    """Refuse opsets the TorchScript exporter path cannot deliver as a TIDL-clean graph."""
    if opset in rules.EXPORT_OPSETS:
        return
    supported = f"{rules.EXPORT_OPSETS[0]} to {rules.EXPORT_OPSETS[-1]}"
    if isinstance(opset, int) and opset > rules.EXPORT_OPSETS[-1]:
        raise TIDLRuleError(
            f"opset {opset} is not exported: from opset 18 torch.onnx needs its dynamo exporter, "
            "which writes adaptive average pooling as ReduceMean + Reshape (TIDL does not import "
            f"ReduceMean alone) and needs onnxscript; use opset {supported} "
            f"(11 is TI's QAT recipe, 17 its newer one). TIDL imports opsets up to 18."
        )
    raise TIDLRuleError(
        f"opset {opset!r} is not exported: Clip takes its min/max as inputs and Resize exists "
        f"only from opset 11; use opset {supported}"
    )


def _example_input(
    model: nn.Module,
    example_input: Tensor | None,
    input_size: Sequence[int] | None,
    info: Mapping[str, Any] | None,
) -> Tensor:
    """The static-shape input the graph is traced with (seeded, so exports are reproducible)."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    if example_input is not None:
        if example_input.dim() != 4:
            raise UsageError(
                f"example_input must be one NCHW batch, got shape {tuple(example_input.shape)}"
            )
        return example_input.detach().to(device=device, dtype=torch.float32)
    if input_size is not None:
        size = tuple(int(v) for v in input_size)
        if len(size) == 2:
            size = (3, *size)
        if len(size) != 3:
            raise UsageError(f"input_size must be (H, W) or (C, H, W), got {tuple(input_size)}")
    elif info is not None:
        size = tuple(info["input_size"])
    else:
        raise UsageError(
            "export_onnx needs the input shape: pass example_input, input_size=(H, W) or "
            "model_name (for the model's default input size)"
        )
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, *size, generator=generator).to(device)


def _torchscript_export(model: nn.Module, example: Tensor, opset: int) -> onnx.ModelProto:
    """Trace with the TorchScript exporter (BN folded by constant folding) into a ModelProto."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The exporter's deprecation notice, and tracer notes on shape checks that only raise.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            export_params=True,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _clean_graph(proto: onnx.ModelProto, simplify: bool) -> onnx.ModelProto:
    """onnxsim, constants to initializers, no Identity."""
    clips = _count(proto, "Clip")
    if simplify:
        import onnxsim  # imported here: it takes most of a second and only this step needs it

        simplified, ok = onnxsim.simplify(proto, check_n=0, range_opt=False, certify=False)
        if not ok:
            raise ExportVerificationError(
                "onnxsim could not simplify the exported graph; export with simplify=False "
                "(--no-simplify) to keep the exporter's graph"
            )
        if _count(simplified, "Clip") != clips:
            raise ExportVerificationError(
                f"onnxsim changed the number of Clip nodes ({clips} -> "
                f"{_count(simplified, 'Clip')}), which would drop QAT ranges; export with "
                "simplify=False (--no-simplify)"
            )
        proto = simplified
    _constants_to_initializers(proto.graph)
    _remove_identities(proto.graph)
    _remove_unused_initializers(proto.graph)
    return proto


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Record inferred shapes in the graph (TIDL's importer reads them); verify reports errors."""
    inferred, _ = infer_shapes(proto)
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(inferred.graph.value_info)
    for output, inferred_output in zip(proto.graph.output, inferred.graph.output, strict=True):
        output.CopyFrom(inferred_output)
    return proto


def _count(proto: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in proto.graph.node)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Move tensor Constant nodes into initializers: TIDL reads those as plain constants."""
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is not None:
            tensor = graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.node.remove(node)


def _remove_identities(graph: onnx.GraphProto) -> None:
    """Bypass Identity nodes (TIDL has no Identity layer), keeping graph output names."""
    outputs = {o.name for o in graph.output}
    produced = {name for node in graph.node for name in node.output}
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        source, target = node.input[0], node.output[0]
        if target in outputs and source not in produced:
            continue  # an output that passes a graph input or constant through: keep it
        old, new = (source, target) if target in outputs else (target, source)
        for other in graph.node:
            other.input[:] = [new if name == old else name for name in other.input]
            other.output[:] = [new if name == old else name for name in other.output]
        graph.node.remove(node)


def _resize_nearest_modes(graph: onnx.GraphProto) -> None:
    """Give linear half-pixel Resize nodes nearest_mode round_prefer_ceil, the one value TIDL's
    operator table names for half-pixel coordinates (a linear resize never reads it)."""
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: a for a in node.attribute}
        mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
        coordinates = attrs.get("coordinate_transformation_mode")
        coordinates = coordinates.s.decode() if coordinates is not None else "half_pixel"
        if mode != "linear" or coordinates not in rules.HALF_PIXEL_MODES:
            continue
        if "nearest_mode" in attrs:
            node.attribute.remove(attrs["nearest_mode"])
        node.attribute.append(onnx.helper.make_attribute("nearest_mode", "round_prefer_ceil"))


def _remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _nudged_layers(graph: onnx.GraphProto, settings: GraphQuantization) -> list[str]:
    """The weight layers whose weights deploy conversion nudged so that TIDL keeps their QAT
    scale on import (grid.keep_scale_on_import)."""
    initializers = {init.name: init for init in graph.initializer}
    nudged = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in rules.QUANTIZED_WEIGHT_OPS or weight is None:
            continue
        if nudged_entries(numpy_helper.to_array(weight), settings.weight_bits):
            nudged.append(node.name or node.input[1])
    return nudged


def _parity(proto: onnx.ModelProto, example: Tensor, reference: Tensor) -> tuple[float, float]:
    """Max absolute and relative (to max|reference|) difference of onnxruntime vs PyTorch."""
    session = onnxruntime_session(proto, optimize=False)
    (output,) = session.run(None, {INPUT_NAME: example.cpu().numpy()})
    expected = reference.detach().cpu().numpy().astype(np.float64)
    if output.shape != expected.shape:
        raise ExportVerificationError(
            f"onnxruntime output shape {output.shape} differs from PyTorch's {expected.shape}"
        )
    abs_diff = float(np.abs(output.astype(np.float64) - expected).max(initial=0.0))
    scale = float(np.abs(expected).max(initial=0.0))
    return abs_diff, abs_diff / scale if scale > 0 else abs_diff


def _append_argmax(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Append ArgMax(axis=1, keepdims=1, select_last_index=0) after the model's output."""
    graph = proto.graph
    (output,) = graph.output
    for node in graph.node:
        node.output[:] = [_LOGITS_NAME if name == output.name else name for name in node.output]
    attributes = {"axis": 1, "keepdims": 1}
    if proto.opset_import[0].version >= 12:
        attributes["select_last_index"] = 0
    graph.node.append(
        onnx.helper.make_node(
            "ArgMax", [_LOGITS_NAME], [OUTPUT_NAME], name="/argmax/ArgMax", **attributes
        )
    )
    del graph.output[:]
    graph.output.append(
        onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.INT64, None)
    )
    return proto


def _stamp(
    proto: onnx.ModelProto,
    name: str,
    quantized: bool,
    untrained: int,
    settings: GraphQuantization | None,
    plan: ExportPlan,
) -> None:
    """Record what wrote the graph, for which device, how it is meant to be imported and
    quantized, and how many of its ranges are untrained."""
    proto.producer_name = "edgezoo"
    proto.producer_version = __version__
    proto.graph.name = name
    kind = "float-ptq"
    if quantized:
        kind = "qat-qdq" if plan.export_format == QDQ_FORMAT else "qat-clip-ranges"
    props = {"edgezoo.quantization": kind, rules.TARGET_PROP: plan.target.name}
    if settings is not None:
        props[rules.WEIGHT_BITS_PROP] = str(settings.weight_bits)
        props[rules.ACTIVATION_BITS_PROP] = str(settings.activation_bits)
        props[rules.ROUNDING_PROP] = settings.activation_rounding
        props[rules.EVAL_PRECISION_PROP] = "float64" if settings.exact_eval else "float32"
        props[rules.ACTIVATION_SCALES_PROP] = settings.activation_scales
        props[rules.BIAS_RULE_PROP] = settings.bias_rule
    if untrained:
        props[rules.UNTRAINED_RANGES_PROP] = str(untrained)
    onnx.helper.set_model_props(proto, props)


def _warn_about_inputs(proto: onnx.ModelProto) -> None:
    """Log what verify does not refuse but changes results: an input range that cuts the tails
    of the normalised inputs."""
    normalised, found = normalised_input_range(proto), input_range(proto)
    if normalised is not None and found is not None:
        (low, high), (_, clip_low, clip_high) = normalised, found
        if clip_low > low or clip_high < high:
            logger.warning(
                "the input range (%.3g, %.3g) cuts the normalised inputs (%.3g, %.3g): the "
                "darkest/brightest pixels saturate on the device",
                clip_low,
                clip_high,
                low,
                high,
            )


def _record_normalisation(proto: onnx.ModelProto, spec: TIDLInputSpec) -> None:
    """Record the input normalisation the TIDL files declare, for verify_onnx's input check,
    and log an input range that cuts its tails."""
    props = rules.graph_properties(proto)
    props[rules.INPUT_MEAN_PROP] = " ".join(f"{v:g}" for v in spec.mean)
    props[rules.INPUT_STD_PROP] = " ".join(f"{v:g}" for v in spec.std)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    _warn_about_inputs(proto)


def _quantizes_input(model: nn.Module) -> bool:
    """Whether quantization gave the model's input its own range (quantize_input=True)."""
    return any(getattr(m, "input_quant", None) is not None for m in model.modules())


def _single_output(output: Any) -> Tensor:
    """The model's one output tensor, also when it comes in a dict, tuple or list of one (as
    torchvision's segmentation models return {"out": ...}): the graph's one output."""
    tensors = output
    if isinstance(output, dict):
        tensors = list(output.values())
    elif isinstance(output, list | tuple):
        tensors = list(output)
    if isinstance(tensors, list) and len(tensors) == 1:
        tensors = tensors[0]
    if not isinstance(tensors, Tensor):
        count = len(tensors) if isinstance(tensors, list) else "no"
        raise ExportVerificationError(
            f"the model returns {type(output).__name__} with {count} tensors; export_onnx "
            "exports one output (TIDL's classification and segmentation graphs have one): "
            "return one tensor (e.g. torchvision segmentation with aux_loss=False), or export "
            "each head from a module that returns only it"
        )
    return tensors


def _failure_message(report: ExportReport) -> str:
    parts = []
    if not report.verification.ok:
        parts.append(str(report.verification))
    if not report.parity_ok:
        parts.append(
            f"onnxruntime differs from PyTorch by {report.parity_max_rel_diff:.3g} relative "
            f"(tolerance {report.parity_tolerance:g})"
        )
    if not report.integer_ok:
        parts.append(report.integer_failure())
    return (
        f"the export to {report.path} is not TIDL-ready (nothing written; pass strict=False "
        "to write it anyway):\n" + "\n".join(parts)
    )


def _input_spec(
    example: Tensor,
    reference: Tensor,
    info: Mapping[str, Any] | None,
    task: str | None,
    preprocessing: Mapping[str, Any] | None,
    argmax: bool,
) -> TIDLInputSpec:
    """The TIDL input description from explicit values, the manifest, or defaults."""
    channels, height, width = (int(v) for v in example.shape[1:])
    if preprocessing is None and info is not None:
        preprocessing = info.get("preprocessing") or _default_weights_preprocessing(info)
    preprocessing = dict(preprocessing or {})
    if task is None:
        task = (
            info["task"] if info else ("segmentation" if reference.dim() == 4 else "classification")
        )
    resize, crop = preprocessing.get("resize"), preprocessing.get("crop")
    final = crop if crop is not None else resize
    if final is None or _as_hw(final) != (height, width):
        # Preprocessing meant for another input size: resize straight to the exported size.
        resize, crop = None, None
    extra = {k: preprocessing[k] for k in ("mean", "std") if k in preprocessing}
    return TIDLInputSpec(
        channels, height, width, task, resize=resize, crop=crop, argmax=argmax, **extra
    )


def _default_weights_preprocessing(info: Mapping[str, Any]) -> Mapping[str, Any] | None:
    weights = info.get("weights") or {}
    tag = info.get("default_weights")
    return weights.get(tag, {}).get("preprocessing") if tag else None


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
