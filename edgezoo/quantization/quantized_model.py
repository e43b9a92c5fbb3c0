"""What a quantized model holds: its ranges, units and BatchNorms, and the scheme its deployed
graph is quantized with (GraphQuantization, recorded in its export)."""

from dataclasses import dataclass

from torch import nn

from edgezoo.errors import QuantizationConfigError
from edgezoo.quantization.affine import AFFINE_SCALES, POWER_OF_TWO_SCALES
from edgezoo.quantization.batch_norm import QuantBatchNormMixin
from edgezoo.quantization.config import QuantizationConfig
from edgezoo.quantization.grid import BIAS_JOINT
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.parameter_free import InputGridLayer, QuantizedLayer
from edgezoo.quantization.weight_layers import QuantWeightMixin, is_depthwise

__all__ = [
    "GraphQuantization",
    "activation_ranges",
    "graph_quantization",
    "is_quantized",
    "named_activation_ranges",
    "quant_batch_norms",
    "refuse_quantized",
]

_QUANTIZATION_TYPES = (
    PACT2,
    QuantWeightMixin,
    QuantBatchNormMixin,
    QuantizedLayer,
    InputGridLayer,
)


def is_quantized(model: nn.Module) -> bool:
    """True when the model already holds edgezoo quantization modules."""
    return any(isinstance(m, _QUANTIZATION_TYPES) for m in model.modules())


def refuse_quantized(model: nn.Module) -> None:
    """Raise QuantizationConfigError when the model is already quantized."""
    if is_quantized(model):
        raise QuantizationConfigError(
            f"{type(model).__name__} is already quantized (it holds PACT2, QuantConv2d, ...): "
            "wrap the float model, or load a QAT checkpoint into a freshly wrapped one"
        )


def quant_batch_norms(model: nn.Module) -> list[QuantBatchNormMixin]:
    """The QAT BatchNorms of a quantized model (folded ones included)."""
    return [m for m in model.modules() if isinstance(m, QuantBatchNormMixin)]


def activation_ranges(model: nn.Module) -> list[PACT2]:
    """Every PACT2 of a quantized model, once each."""
    return [m for m in model.modules() if isinstance(m, PACT2)]


@dataclass(frozen=True)
class GraphQuantization:
    """How a quantized model's deployed graph is quantized (recorded in its export).

    bitwidth_weights / bitwidth_activations: the narrowest widths (the graph's base widths;
    the export records the wider layers of a mixed-precision model per tensor).
    widest_bitwidth: the widest weight or activation width of any layer. per_channel_weights:
    some non-depthwise layer has per-channel weight scales. affine: the ranges are affine
    (float scales, zero points). target: the device its config names. bias_rule: how the
    device holds the biases (grid.BIAS_RULES).
    """

    bitwidth_weights: int
    bitwidth_activations: int
    activation_rounding: str
    widest_bitwidth: int = 8
    exact_eval: bool = False
    per_channel_weights: bool = False
    affine: bool = False
    target: str | None = None
    bias_rule: str = BIAS_JOINT

    @property
    def activation_scales(self) -> str:
        return AFFINE_SCALES if self.affine else POWER_OF_TWO_SCALES


def graph_quantization(model: nn.Module) -> GraphQuantization:
    """The bit widths, rounding, scheme and eval precision a quantized model computes with (a
    wrapper evaluates in float64 when its config says so; its bare .module always in float32)."""
    config = getattr(model, "config", None)
    wrapper = isinstance(config, QuantizationConfig)
    model = model.module if wrapper else model
    ranges = activation_ranges(model)
    units = [m for m in model.modules() if isinstance(m, QuantWeightMixin)]
    if not ranges:
        raise QuantizationConfigError(f"{type(model).__name__} holds no activation ranges")
    per_channel = any(
        u.per_channel and not (isinstance(u, nn.Conv2d) and is_depthwise(u)) for u in units
    )
    weight_widths = [u.bitwidth for u in units] or [8]
    activation_widths = [p.bitwidth for p in ranges]
    return GraphQuantization(
        bitwidth_weights=min(weight_widths),
        bitwidth_activations=min(activation_widths),
        activation_rounding=ranges[0].rounding_mode,
        widest_bitwidth=max(*weight_widths, *activation_widths),
        exact_eval=wrapper and config.evaluates_exactly,
        per_channel_weights=per_channel,
        affine=any(p.scales == AFFINE_SCALES for p in ranges),
        target=config.target if wrapper else None,
        bias_rule=units[0].bias_rule if units else BIAS_JOINT,
    )


def named_activation_ranges(model: nn.Module) -> dict[str, PACT2]:
    """Every PACT2 under the name of the module that owns it (not of one that reads its grid)."""
    named: dict[int, tuple[str, PACT2]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, PACT2) and ".input_grid" not in f".{name}":
            named.setdefault(id(module), (name, module))
    return dict(named.values())
