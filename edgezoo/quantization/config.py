"""QuantizationConfig: how a model is quantized, given once to whichever wrapper quantizes it."""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgezoo.errors import QuantizationConfigError
from edgezoo.quantization.affine import AFFINE_SCALES, POWER_OF_TWO_SCALES
from edgezoo.quantization.grid import (
    BIAS_JOINT,
    BIAS_TI_V1,
    DEFAULT_ACTIVATION_ROUNDING,
    HALF_EVEN,
    check_activation_rounding,
    check_bias_rule,
    check_bitwidth,
)
from edgezoo.quantization.layer_spec import LayerRule, layer_rules
from edgezoo.quantization.range_statistics import check_range_shrink, check_update_gap
from edgezoo.targets import CLIP_FORMAT, QDQ_FORMAT, check_scheme, resolve_target


@dataclass(frozen=True)
class QuantizationConfig:
    """Bit widths, depthwise per-channel weights, input/output ranges and range trimming.

    bitwidth_weights / bitwidth_activations: 8 (TIDL's default) or 16, any int in [2, 16].
    per_channel_depthwise: per-output-channel weight scales for depthwise convs (TIDL on TDA4VM
    is per-tensor). quantize_input: a range on the model input (TIDL's input Clip).
    quantize_output: a range on the model output too. range_shrink_percentile: the share (in
    percent, per tail) of each batch's histogram trimmed before its range is taken.
    max_range_update_gap: in QAT, at most this many training batches between two measurements
    of a range while its power-of-two clip stays put (PACT2's max_update_gap; 1 measures every
    batch as TI does; calibration always measures every batch). activation_rounding: how
    activations round onto their grid, "half_up" (floor(x + 0.5)), "half_away" or "half_even"
    (grid.ACTIVATION_ROUNDINGS); None picks half_up for TDA4VM's Clip graphs (TIDL's shifts)
    and half_even for QDQ devices and schemes (ONNX QuantizeLinear's rule); the export records
    it for the integer simulation.
    exact_eval: evaluate (eval mode) in float64, so every product and sum is exact and the
    result equals the integer graph bit for bit; None means "when a bit width exceeds 8",
    where float32's 24-bit mantissa cannot hold the integer sums (at 8 bits float32 is exact
    for realistic layers, and faster).
    per_channel_weights: a power-of-two weight scale per output channel for every conv and
    linear layer. asymmetric_activations: affine activation ranges (a float scale, and a zero
    point where TIDL's layers take one; symmetric before pools, resizes and at the input).
    Both need a QDQ export and a device
    other than TDA4VM. target: the device the model is for (edgezoo.targets.TARGETS); a
    scheme the device does not run is refused here, and export_onnx defaults to it.
    bias_rule: how the device holds each bias on its accumulator (grid.BIAS_RULES): "ti_v1"
    (TI's v1 QAT rule: b bits on the bias's own power-of-two scale, then truncated onto the
    joint grid, a b-bit part times 127 or 255 where that grid is finer) or "joint" (rounded once
    onto the joint grid, 2b-bit saturation: QDQ graphs' int32 biases); None picks ti_v1 for
    TDA4VM's Clip graphs and joint for QDQ devices and schemes. QAT, deploy conversion, the
    export and the integer simulation all follow it (docs/integer_simulation.md says why).
    learn_ranges: in QAT, train each power-of-two clip by gradient in the log2 domain (TQT;
    learned_range.py) once statistics have started it, instead of following statistics; the
    engine gives the thresholds their own learning rate (TrainConfig.range_lr). Calibration
    and evaluation ignore it (no gradients there); power-of-two scales only.
    layer_bits: per-layer widths in short form, module name or glob -> 8 or 16 for its
    weights and activations ({"layer1.*": 16, "fc": 16}); layer_rules: the full form,
    LayerRule(match, bitwidth_weights, bitwidth_activations) by name, glob or module type.
    The most specific rule wins (name, glob, type; later wins among equals), else the global
    bitwidth_weights / bitwidth_activations (layer_spec.py).
    """

    bitwidth_weights: int = 8
    bitwidth_activations: int = 8
    per_channel_depthwise: bool = False
    quantize_input: bool = True
    quantize_output: bool = False
    range_shrink_percentile: float = 0.01
    max_range_update_gap: int = 4
    activation_rounding: str | None = None
    exact_eval: bool | None = None
    per_channel_weights: bool = False
    asymmetric_activations: bool = False
    target: str | None = None
    bias_rule: str | None = None
    learn_ranges: bool = False
    layer_bits: Mapping[str, int] | None = None
    layer_rules: tuple[LayerRule, ...] = ()

    def __post_init__(self) -> None:
        if self.layer_bits is not None and not isinstance(self.layer_bits, Mapping):
            raise QuantizationConfigError(
                f"layer_bits maps module names or globs to 8 or 16, got {self.layer_bits!r}"
            )
        # Checkpoints save the rules as dicts; they come back as LayerRules.
        object.__setattr__(self, "layer_rules", layer_rules(None, self.layer_rules))
        object.__setattr__(self, "layer_bits", dict(self.layer_bits) if self.layer_bits else None)
        if self.activation_rounding is not None:
            check_activation_rounding(self.activation_rounding)
        if self.bias_rule is not None:
            check_bias_rule(self.bias_rule)
        if self.bias_rule == BIAS_TI_V1 and (
            self.asymmetric_activations or self.per_channel_weights
        ):
            raise QuantizationConfigError(
                "bias_rule='ti_v1' is TIDL's bias arithmetic for power-of-two per-tensor Clip "
                "graphs; per-channel or asymmetric schemes export QDQ graphs whose int32 biases "
                "follow bias_rule='joint' (or leave bias_rule unset)"
            )
        if self.target is not None:
            device = resolve_target(self.target)
            check_scheme(device, self.per_channel_weights, self.asymmetric_activations)
            self._check_exportable(device)
        if self.learn_ranges and self.asymmetric_activations:
            raise QuantizationConfigError(
                "learn_ranges trains power-of-two clips; asymmetric (affine) ranges come from "
                "statistics: use one of learn_ranges and asymmetric_activations"
            )
        check_bitwidth(self.bitwidth_weights)
        check_bitwidth(self.bitwidth_activations)
        check_range_shrink(self.range_shrink_percentile)
        check_update_gap(self.max_range_update_gap, "max_range_update_gap")

    def _check_exportable(self, device) -> None:
        """Refuse settings a device that imports only QDQ graphs could never take (its
        QuantizeLinear rounds half to even, its biases are int32 on the joint grid)."""
        if CLIP_FORMAT in device.formats:
            return
        wrong = []
        if self.bias_rule == BIAS_TI_V1:
            wrong.append("bias_rule='ti_v1'")
        if self.activation_rounding not in (None, HALF_EVEN):
            wrong.append(f"activation_rounding={self.activation_rounding!r}")
        if wrong:
            raise QuantizationConfigError(
                f"{device.name} imports only QDQ graphs (rounding half to even, int32 biases on "
                f"the joint grid): {' and '.join(wrong)} would train a model nothing can export "
                f"for it; leave {'them' if len(wrong) > 1 else 'it'} unset (--bias-rule / "
                "--activation-rounding)"
            )

    @property
    def evaluates_exactly(self) -> bool:
        """Whether eval runs in float64 (exact_eval, or its default by bit width)."""
        if self.exact_eval is not None:
            return self.exact_eval
        return self.widest_bitwidth > 8

    @property
    def rules(self) -> tuple[LayerRule, ...]:
        """Every per-layer rule in order: layer_rules, then layer_bits' short form."""
        return layer_rules(self.layer_bits, self.layer_rules)

    @property
    def widest_bitwidth(self) -> int:
        """The widest weight or activation width any layer may get."""
        ruled = [w for r in self.rules for w in (r.bitwidth_weights, r.bitwidth_activations)]
        return max(self.bitwidth_weights, self.bitwidth_activations, *(w for w in ruled if w))

    @property
    def rounding_mode(self) -> str:
        """The activation rounding in effect (activation_rounding, or its default)."""
        if self.activation_rounding is not None:
            return self.activation_rounding
        return HALF_EVEN if self.for_qdq else DEFAULT_ACTIVATION_ROUNDING

    @property
    def biases(self) -> str:
        """The bias rule in effect (bias_rule, or its default: joint for QDQ, else ti_v1)."""
        if self.bias_rule is not None:
            return self.bias_rule
        return BIAS_JOINT if self.for_qdq else BIAS_TI_V1

    @property
    def for_qdq(self) -> bool:
        """Whether the model is meant for a QDQ export: an affine or per-channel scheme, or a
        target whose default format is QDQ."""
        if self.asymmetric_activations or self.per_channel_weights:
            return True
        return self.target is not None and resolve_target(self.target).default_format == QDQ_FORMAT

    @property
    def activation_scales(self) -> str:
        """How ranges become grids: power-of-two clips, or affine (asymmetric_activations)."""
        return AFFINE_SCALES if self.asymmetric_activations else POWER_OF_TWO_SCALES

    @classmethod
    def resolve(
        cls, config: "QuantizationConfig | None" = None, **overrides: Any
    ) -> "QuantizationConfig":
        """config (default: the defaults) with the given fields replaced; names are checked."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise QuantizationConfigError(
                f"unknown quantization setting(s) {', '.join(unknown)}; QuantizationConfig has "
                f"{', '.join(sorted(fields))}"
            )
        return dataclasses.replace(config or cls(), **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for checkpoints and reports)."""
        return dataclasses.asdict(self)
