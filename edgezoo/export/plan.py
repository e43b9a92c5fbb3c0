"""ExportPlan: where and how a graph is exported (device, format, opset), resolved once and
refused early when the device, the format or the model's quantization scheme rules it out."""

from dataclasses import dataclass

from edgezoo.errors import QuantizationConfigError, TIDLRuleError
from edgezoo.export.tidl_config import TIDLCompilation
from edgezoo.quantization import GraphQuantization
from edgezoo.quantization.grid import BIAS_JOINT, HALF_EVEN
from edgezoo.targets import (
    CLIP_FORMAT,
    QDQ_FORMAT,
    TargetDevice,
    check_export_format,
    check_scheme,
    resolve_target,
)
from edgezoo.tidl import rules

__all__ = ["ExportPlan", "check_opset", "export_plan"]


@dataclass(frozen=True)
class ExportPlan:
    """Where and how a graph is exported: the device, the format and the opset."""

    target: TargetDevice
    export_format: str
    opset: int

    def compilation(
        self,
        quantized: bool,
        settings: GraphQuantization | None,
        names_16bit: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
    ) -> TIDLCompilation:
        """The TIDL compile settings of this plan for the exported graph; names_16bit: the
        (features, params) TIDL layer names of a mixed-precision graph's 16-bit layers."""
        bits = settings.bitwidth_activations if settings and quantized else 8
        affine = bool(settings and (settings.per_channel_weights or settings.affine))
        target, export_format = self.target, self.export_format
        return TIDLCompilation(target, quantized, export_format, bits, affine, *names_16bit)


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
        opset = rules.QDQ_MIN_OPSET if export_format == QDQ_FORMAT else rules.EXPORT_OPSETS[0]
    check_opset(opset)
    if export_format == QDQ_FORMAT and opset < rules.QDQ_MIN_OPSET:
        raise TIDLRuleError(
            f"a QDQ export needs opset {rules.QDQ_MIN_OPSET} or later (per-channel "
            "DequantizeLinear), "
            f"got {opset}"
        )
    return ExportPlan(device, export_format, opset)


def _check_qdq_arithmetic(settings: GraphQuantization, device: TargetDevice) -> None:
    """Refuse a QDQ export of a model whose arithmetic a QDQ graph cannot carry: its
    QuantizeLinear rounds half to even and its biases are int32 on the joint grid."""
    if settings.widest_bitwidth != 8:
        raise QuantizationConfigError(
            f"TIDL imports prequantized (QDQ) graphs at 8 bits only, and this model has "
            f"{settings.widest_bitwidth}-bit layers: export it as a Clip graph for TDA4VM "
            "(export_format='clip' / --format clip, whose TIDL files list the 16-bit layers), or "
            "train it at 8 bits"
        )
    wrong = []
    if settings.activation_rounding != HALF_EVEN:
        wrong.append(
            f"activations rounded {settings.activation_rounding} (QuantizeLinear: half_even)"
        )
    if settings.bias_rule != BIAS_JOINT:
        wrong.append(f"bias rule {settings.bias_rule} (QDQ's int32 biases: joint)")
    if wrong:
        clip = (
            f"export_format='clip' (--format clip) for {device.name}, or "
            if CLIP_FORMAT in device.formats
            else ""
        )
        raise QuantizationConfigError(
            f"this model was trained with {' and '.join(wrong)}, so a QDQ graph would not "
            f"compute what it computes: {clip}train with "
            f"QuantizationConfig(target={device.name!r}, activation_rounding='half_even', "
            f"bias_rule='joint') (CLI: --target {device.name} --activation-rounding half_even "
            "--bias-rule joint)"
        )


def check_opset(opset: int) -> None:
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
