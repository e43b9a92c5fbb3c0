"""export_onnx: a float or QAT edgezoo model -> one verified, TIDL-ready ONNX file plus configs.

The QAT path exports `convert_to_deploy(q)`: a plain float network whose Convs carry the folded
weights the QAT forward used (on the power-of-two grid), with every activation range as a Clip
leaf module. This module is the pipeline; each step lives with its concept: the device, format
and opset (plan.py), the trace and the cleaning passes (graph_passes.py), what the graph
records (metadata.py), the checks against TIDL's rules (verify.py) and against what the device
computes (device_agreement.py: onnxruntime, the integer simulation, int8 kernels), and the
TIDL files (tidl_config.py). Nothing is written unless every check passes (strict).
"""

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import onnx
import torch
from torch import Tensor, nn

from edgezoo.detection import MetaArch, find_meta_arch
from edgezoo.errors import (
    ExportVerificationError,
    UncalibratedRangesError,
    UsageError,
)
from edgezoo.export.device_agreement import int8_agreement, runtime_parity, with_device_figures
from edgezoo.export.graph_passes import (
    append_argmax,
    clean_graph,
    count_ops,
    nudged_layers,
    record_shapes,
    set_resize_nearest_modes,
    torchscript_export,
)
from edgezoo.export.layer_widths import record_widths, tidl_16bit_names, traced_widths
from edgezoo.export.memory import check_export_memory
from edgezoo.export.meta_arch_files import meta_arch_text, record_meta_arch
from edgezoo.export.metadata import input_spec, record_normalisation, stamp
from edgezoo.export.outputs import output_tensors, traceable_outputs
from edgezoo.export.plan import ExportPlan, export_plan
from edgezoo.export.qdq import to_qdq
from edgezoo.export.report import ExportReport, VerifyReport
from edgezoo.export.session import onnxruntime_session
from edgezoo.export.tidl_config import TIDLCompilation, write_tidl_configs
from edgezoo.export.verify import verify_onnx
from edgezoo.fileio import atomic_path, disk_full_error, is_disk_full, writable_destination
from edgezoo.module_state import kept_modes
from edgezoo.quantization import (
    QUANT_WRAPPERS,
    Clip,
    GraphQuantization,
    convert_to_deploy,
    graph_quantization,
    is_quantized,
    named_activation_ranges,
)
from edgezoo.registry import model_info
from edgezoo.targets import (
    QDQ_FORMAT,
)
from edgezoo.tasks import DETECTION
from edgezoo.text import preview
from edgezoo.tidl.tensor_bits import TensorBits

__all__ = ["ExportPlan", "export_onnx", "export_plan", "int8_agreement", "onnxruntime_session"]

logger = logging.getLogger(__name__)


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
    TIDL files (beside the ONNX unless write_configs=False; else task and ImageNet normalisation
    assumed). Untrained ranges raise UncalibratedRangesError unless allow_uncalibrated (the
    graph records how many). Several output tensors: one named graph output each. Modes kept.
    """
    path = writable_destination(path)
    wrapped, settings, quantized = _model_kind(model)
    plan = export_plan(settings, target, export_format, opset)
    untrained = _untrained_ranges(model, allow_uncalibrated) if wrapped else []
    info = None if model_name is None else model_info(model_name)
    example = _example_input(model, example_input, input_size, info)
    traced = _reference_and_graph(model, example, plan.opset, wrapped)
    detector = find_meta_arch(model)
    _check_outputs(traced.names, argmax, write_configs and detector is None, plan)
    proto, aligned, parity, widths = _graph_for_plan(
        traced, example, simplify, argmax, settings, plan, quantized
    )
    task = DETECTION if detector is not None and task is None else task
    spec = input_spec(example, traced.reference[0], info, task, preprocessing, argmax)
    name = model_name or type(model).__name__
    stamp(proto, name, quantized, len(untrained), settings, plan, widths)
    record_normalisation(proto, spec)
    meta_text = _detector_record(proto, detector, example, traced)
    verification = verify_onnx(
        proto, quantized, wrapped and _quantizes_input(model), allow_uncalibrated, meta_text
    )
    measured = (tuple(example.shape), parity, parity_tolerance, tuple(aligned), plan.target.name)
    report = _report(proto, path, verification, *measured, traced.names)
    if traced.qat is not None:
        report = with_device_figures(report, proto, argmax, example, traced.qat, model)
    _write(proto, report, strict)
    compilation = None
    if write_configs:
        compilation = _compilation(plan, quantized, settings, proto, widths, detector)
    return _with_configs(report, spec, quantized, compilation, meta_text)


def _compilation(
    plan: ExportPlan,
    quantized: bool,
    settings: GraphQuantization | None,
    proto: onnx.ModelProto,
    widths: TensorBits | None,
    detector: MetaArch | None,
) -> TIDLCompilation:
    """The TIDL compile settings of the written graph (its 16-bit layers by TIDL's names, a
    detector's meta-architecture)."""
    names_16bit = tidl_16bit_names(proto, widths) if widths is not None else ((), ())
    compilation = plan.compilation(quantized, settings, names_16bit)
    if detector is None:
        return compilation
    return dataclasses.replace(compilation, meta_arch_type=detector.meta_arch_type)


def _detector_record(
    proto: onnx.ModelProto, detector: MetaArch | None, example: Tensor, traced: "_Traced"
) -> str | None:
    """A detector's meta-architecture recorded in the graph, and its prototxt text."""
    if detector is None:
        return None
    record_meta_arch(proto, detector)
    return meta_arch_text(detector, example, traced.names, traced.reference)


def _with_configs(
    report: ExportReport,
    spec,
    quantized: bool,
    compilation: TIDLCompilation | None,
    meta_arch: str | None,
) -> ExportReport:
    """The report of a written graph, with the TIDL files written beside it (unless None)."""
    if compilation is not None:
        files = write_tidl_configs(report.path, spec, quantized, compilation, meta_arch)
        report = dataclasses.replace(report, config_files=files)
    logger.info("exported %s", report)
    return report


def _model_kind(model: nn.Module) -> tuple[bool, GraphQuantization | None, bool]:
    """Whether the model is a QAT model (a wrapper or its module), its graph quantization, and
    whether the graph will hold ranges (a QAT model, or a float one with Clip layers); a model
    with non-finite weights is refused first."""
    _refuse_non_finite(model)
    wrapped = isinstance(model, QUANT_WRAPPERS) or is_quantized(model)
    settings = graph_quantization(model) if wrapped else None
    quantized = wrapped or any(isinstance(m, Clip) for m in model.modules())
    return wrapped, settings, quantized


def _check_outputs(
    names: tuple[str, ...], argmax: bool, write_configs: bool, plan: "ExportPlan"
) -> None:
    """Refuse what only a one-output graph has: TIDL's classification/segmentation files
    (write_configs: a detector's files describe its heads), a final ArgMax, the QDQ agreement
    check."""
    if len(names) == 1:
        return
    if argmax:
        raise UsageError(
            f"argmax=True appends one ArgMax, but the model has {len(names)} outputs "
            f"({', '.join(names)}): export without argmax"
        )
    if write_configs:
        raise UsageError(
            f"the model has {len(names)} outputs ({', '.join(names)}): edgezoo's TIDL files "
            "describe one classification or segmentation output; pass write_configs=False "
            "and give TIDL your own post-processing"
        )
    if plan.export_format == QDQ_FORMAT:
        raise UsageError(
            "a QDQ export is checked on one output; export a model with several outputs as a "
            "Clip graph (export_format='clip', CLI: --format clip)"
        )


def _graph_for_plan(
    traced: "_Traced",
    example: Tensor,
    simplify: bool,
    argmax: bool,
    settings: GraphQuantization | None,
    plan: "ExportPlan",
    quantized: bool,
) -> tuple[onnx.ModelProto, list[str], tuple[float, float], TensorBits | None]:
    """The finished graph in the plan's format: simplified, grid-aligned (Clip) or rewritten
    as QDQ, with the grid-aligned layers, the onnxruntime parity and the per-tensor widths
    of a QAT graph (read on the finished graph: the cleaning passes keep node names, not
    every tensor name)."""
    proto, parity = _finished_graph(traced.proto, example, traced.reference, simplify, argmax)
    if settings is None:
        return proto, [], parity, None
    widths = record_widths(proto, traced.widths, traced.deployed, settings)
    if plan.export_format == QDQ_FORMAT and quantized:
        proto = record_shapes(to_qdq(proto, widths.widest, settings.activation_scales))
        return proto, [], parity, widths  # the QDQ rewrite writes the QAT integers themselves
    return proto, nudged_layers(proto.graph, widths), parity, widths


def _report(
    proto: onnx.ModelProto,
    path: Path,
    verification: VerifyReport,
    input_shape: tuple[int, ...],
    parity: tuple[float, float],
    parity_tolerance: float,
    aligned_weights: tuple[str, ...],
    target: str,
    output_names: tuple[str, ...],
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
        clip_count=count_ops(proto, "Clip"),
        aligned_weights=aligned_weights,
        target=target,
        output_names=output_names,
    )


def _finished_graph(
    proto: onnx.ModelProto,
    example: Tensor,
    reference: list[Tensor],
    simplify: bool,
    argmax: bool,
) -> tuple[onnx.ModelProto, tuple[float, float]]:
    """The cleaned graph with its shapes and the parity with PyTorch (before an ArgMax)."""
    proto = clean_graph(proto, simplify)
    set_resize_nearest_modes(proto.graph)
    parity = runtime_parity(proto, example, reference)
    if argmax:
        proto = append_argmax(proto)
    return record_shapes(proto), parity


def _write(proto: onnx.ModelProto, report: ExportReport, strict: bool) -> None:
    """Save the graph, unless strict and it is not TIDL-ready (then raise, writing nothing)."""
    if strict and not report.ok:
        raise ExportVerificationError(_failure_message(report), report.verification)
    # Atomic: a full disk or a kill leaves the previous file intact, never a broken one.
    path = report.path
    try:
        with atomic_path(path) as partial:
            onnx.save_model(proto, partial, save_as_external_data=False)
    except OSError as err:
        if is_disk_full(err, path.parent, proto.ByteSize()):
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing written"
            raise disk_full_error(path, proto.ByteSize(), kept) from err
        raise


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


class _Traced(NamedTuple):
    """The exporter's graph and what it was traced from: the output names, PyTorch's outputs
    of the deployed model (for QAT its deploy form: the float graph's arithmetic), a QAT
    model's quantized eval outputs (None for a float model), and the width of each Clip /
    weight node read on the deployed model."""

    names: tuple[str, ...]
    reference: list[Tensor]
    qat: list[Tensor] | None
    proto: onnx.ModelProto
    deployed: nn.Module
    widths: dict[str, int]


def _reference_and_graph(model: nn.Module, example: Tensor, opset: int, wrapped: bool) -> _Traced:
    """Trace the model's deployed form to ONNX (modes restored), once its memory is known to
    fit."""
    check_export_memory(model, example)
    quantized = None
    with kept_modes(model):
        model.eval()
        with torch.no_grad():
            if wrapped:
                quantized = output_tensors(model(example))[1]
                deploy = convert_to_deploy(model)
            else:
                deploy = model
            output = deploy(example)
            names, reference = output_tensors(output)
        root = traceable_outputs(deploy, output)
        proto = torchscript_export(root, example, opset, names)
    return _Traced(names, reference, quantized, proto, deploy, traced_widths(proto, root))


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


def _quantizes_input(model: nn.Module) -> bool:
    """Whether quantization gave the model's input its own range (quantize_input=True)."""
    return any(getattr(m, "input_quant", None) is not None for m in model.modules())


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
        f"the export to {report.path} is not TIDL-ready (nothing written; pass strict=False, "
        "CLI: --no-strict, to write it anyway):\n" + "\n".join(parts)
    )
