"""Turn a module-only float model into its QAT form in place, keeping every state_dict key.

From the leaf graph of one forward (graph.py) the rules of TI's v1 design are applied:
- each ReLU / ReLU6 is replaced in its slot by an unsigned PACT2 (ReLU6 becomes a learned
  power-of-two clip);
- each Conv2d / Linear becomes a QuantConv2d / QuantLinear sharing its parameter tensors; a
  Conv2d whose only consumer is a BatchNorm2d folds that BN (which becomes a QuantBatchNorm2d
  in its slot, keeping its parameters and buffers);
- a conv (+BN) or linear output that is not followed by an activation gets a signed PACT2;
  AddBlock / CatBlock and non-global pools not followed by an activation get one too;
- the model input gets a PACT2 in the first layer that reads it, and the model outputs get one
  when `quantize_output` is set. Resize, Flatten, global pooling and dropout get no new range.

How the keys stay the same: every replacement takes the slot (parent attribute) of the module
it replaces and holds the very same parameter and buffer tensors under the same names
(QuantConv2d is an nn.Conv2d subclass, QuantBatchNorm2d an nn.BatchNorm2d subclass), so an
optimizer built before wrapping still holds the right tensors. A range after a layer with state
is that layer's `output_quant` child (new keys `<layer>.output_quant.*`, old keys untouched);
wrapping it in an nn.Sequential would have renamed `conv.weight` to `conv.0.weight`. A
parameter-free layer (add, concat, pool) moves into a QuantizedLayer in its slot: it has no keys
to rename. A conv reaches its folded BN (a sibling) through a reference kept in a tuple, not a
registered child, so the BN's keys are not duplicated under the conv's name. No hooks run in the
training path: every behaviour is in the forward of the replacement modules (the only hook is a
load_state_dict pre-hook on each range, so float checkpoints still load with strict=True).
"""

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from edgezoo.errors import ModuleOnlyViolationError, QuantizationConfigError
from edgezoo.layers import AddBlock, CatBlock, ResizeWith
from edgezoo.quantization.fake_quant import check_bitwidth
from edgezoo.quantization.graph import LeafGraph, LeafNode, iter_tensors, trace_leaf_graph
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.quant_norm import QUANT_BATCH_NORMS, QuantBatchNormMixin
from edgezoo.quantization.quant_weight import QuantConv2d, QuantLinear, is_depthwise
from edgezoo.quantization.quantized_layer import QuantizedLayer
from edgezoo.quantization.range_io import RangeIOMixin

logger = logging.getLogger(__name__)

ACTIVATION, WEIGHT, NORM, MERGE, POOL, PASSTHROUGH, OTHER = (
    "activation",
    "weight",
    "norm",
    "merge",
    "pool",
    "passthrough",
    "other",
)

_QUANT_WEIGHT_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
}
_PASSTHROUGH_TYPES = (
    nn.Flatten,
    nn.Identity,
    nn.modules.dropout._DropoutNd,
    ResizeWith,
    nn.Upsample,
)
_POOL_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)


@dataclass(frozen=True)
class QuantizationConfig:
    """How a model is quantized: bit widths, depthwise per-channel weights, input/output ranges."""

    bitwidth_weights: int = 8
    bitwidth_activations: int = 8
    per_channel_depthwise: bool = False
    quantize_input: bool = True
    quantize_output: bool = False
    range_shrink_percentile: float = 0.01

    def __post_init__(self) -> None:
        check_bitwidth(self.bitwidth_weights)
        check_bitwidth(self.bitwidth_activations)
        if not 0.0 <= self.range_shrink_percentile < 50.0:
            raise QuantizationConfigError(
                f"range_shrink_percentile is a percentage per tail in [0, 50), got "
                f"{self.range_shrink_percentile!r}; TI's default is 0.01"
            )


def is_global_pool(module: nn.Module) -> bool:
    """AdaptiveAvgPool2d to 1x1: its output stays inside its input's range, so no new range."""
    size = getattr(module, "output_size", None)
    return isinstance(module, nn.AdaptiveAvgPool2d) and size in (1, (1, 1), [1, 1])


def layer_kind(module: nn.Module) -> str:
    """How quantization treats a leaf module (one of the kind constants of this file)."""
    if type(module) in (nn.ReLU, nn.ReLU6):
        return ACTIVATION
    if type(module) in _QUANT_WEIGHT_LAYERS:
        return WEIGHT
    if type(module) in QUANT_BATCH_NORMS:
        return NORM
    if isinstance(module, AddBlock | CatBlock):
        return MERGE
    if isinstance(module, _PASSTHROUGH_TYPES) or is_global_pool(module):
        return PASSTHROUGH
    if isinstance(module, _POOL_TYPES):
        return POOL
    return OTHER


def is_quantized(model: nn.Module) -> bool:
    """True when the model already holds edgezoo quantization modules."""
    return any(isinstance(m, PACT2 | RangeIOMixin) for m in model.modules())


def keep_range_when_missing(
    module: nn.Module,
    state_dict: dict[str, Tensor],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load-state-dict pre-hook of each inserted PACT2: a checkpoint without any of its keys
    (a float or torchvision checkpoint) leaves the range as it is instead of failing strict
    loading; a checkpoint with some of its keys loads (and is checked) as usual."""
    own = module.state_dict(keep_vars=True)
    if any(prefix + key in state_dict for key in own):
        return
    for key, value in own.items():
        state_dict[prefix + key] = value
    logger.debug("%s: no range in the checkpoint, keeping the current one", prefix or "range")


class _Planner:
    """Decide, from the leaf graph, which modules are replaced and where ranges go."""

    def __init__(self, graph: LeafGraph, config: QuantizationConfig, device: torch.device):
        self.graph = graph
        self.config = config
        self.device = device
        self.kinds = {name: layer_kind(node.module) for name, node in graph.nodes.items()}
        self.bn_of_conv = self._pair_conv_bn()
        self.replacements: dict[str, nn.Module] = {}
        self.output_ranges: dict[str, PACT2] = {}
        self.input_ranges: dict[str, PACT2] = {}

    def new_range(self, signed: bool | None, like: nn.Module) -> PACT2:
        pact = PACT2(
            signed=signed,
            bitwidth=self.config.bitwidth_activations,
            range_shrink_percentile=self.config.range_shrink_percentile,
        ).to(self.device)
        pact.train(like.training)
        pact.register_load_state_dict_pre_hook(keep_range_when_missing)
        return pact

    def _pair_conv_bn(self) -> dict[str, str]:
        """Conv2d -> BatchNorm2d it folds: the conv's only consumer, reading only the conv."""
        pairs = {}
        for name, node in self.graph.nodes.items():
            if type(node.module) is not nn.Conv2d or len(node.consumers) != 1 or node.is_output:
                continue
            consumer = self.graph.nodes[node.consumers[0]]
            bn = consumer.module
            if (
                type(bn) is nn.BatchNorm2d
                and bn.track_running_stats
                and consumer.inputs == (name,)
                and bn.num_features == node.module.out_channels
            ):
                pairs[name] = consumer.name
        return pairs

    def _needs_range(self, node: LeafNode) -> bool:
        """A new range after this output, unless activations (which become ranges) read it."""
        if node.consumers:
            return not all(self.kinds[c] == ACTIVATION for c in node.consumers)
        return node.is_output and self.config.quantize_output

    def plan(self) -> None:
        config = self.config
        for name, node in self.graph.nodes.items():
            kind, module = self.kinds[name], node.module
            if kind == ACTIVATION:
                self.replacements[name] = self.new_range(signed=False, like=module)
                continue
            if kind == WEIGHT:
                per_channel = (
                    config.per_channel_depthwise
                    and isinstance(module, nn.Conv2d)
                    and is_depthwise(module)
                )
                quant_type = _QUANT_WEIGHT_LAYERS[type(module)]
                self.replacements[name] = quant_type.from_float(
                    module,
                    bitwidth=config.bitwidth_weights,
                    per_channel=per_channel,
                    bias_bitwidth=max(config.bitwidth_weights, config.bitwidth_activations),
                )
            elif kind == NORM:
                self.replacements[name] = QUANT_BATCH_NORMS[type(module)].from_float(module)
            folded_conv = kind == WEIGHT and name in self.bn_of_conv
            if kind in (WEIGHT, NORM) and not folded_conv and self._needs_range(node):
                self.output_ranges[name] = self.new_range(signed=True, like=module)
            elif kind in (MERGE, POOL) and self._needs_range(node):
                self.output_ranges[name] = self.new_range(signed=None, like=module)
        if config.quantize_output:
            for name in self.graph.output_producers:
                if name in self.graph.nodes and self._output_is_float(name):
                    module = self.graph.nodes[name].module
                    signed = True if self.kinds[name] in (WEIGHT, NORM) else None
                    self.output_ranges[name] = self.new_range(signed=signed, like=module)
        if config.quantize_input:
            for name in self.graph.input_consumers:
                if self.kinds[name] != ACTIVATION:
                    module = self.graph.nodes[name].module
                    self.input_ranges[name] = self.new_range(signed=None, like=module)

    def _output_is_float(self, name: str) -> bool:
        return self.kinds[name] != ACTIVATION and name not in self.output_ranges

    def range_of_output(self, producer: str) -> PACT2 | None:
        """The range whose grid a producer's output lies on, looking through pass-through ops."""
        while producer in self.graph.nodes:
            if self.kinds[producer] == ACTIVATION:
                return self.replacements[producer]
            if producer in self.output_ranges:
                return self.output_ranges[producer]
            node = self.graph.nodes[producer]
            if self.kinds[producer] != PASSTHROUGH or not node.inputs:
                return None
            if producer in self.input_ranges:
                return self.input_ranges[producer]
            producer = node.inputs[0]
        return None

    def _block_output_range(self, tail: str) -> PACT2 | None:
        """The range right after a conv(+BN) block: its own, or the activation reading it."""
        if tail in self.output_ranges:
            return self.output_ranges[tail]
        consumers = self.graph.nodes[tail].consumers
        if len(consumers) == 1 and self.kinds[consumers[0]] == ACTIVATION:
            return self.replacements[consumers[0]]
        return None

    def build(self) -> tuple[dict[str, nn.Module], list[str]]:
        """The module for every slot that changes, and the leaves left unquantized."""
        slots: dict[str, nn.Module] = dict(self.replacements)
        left_float = []
        for name in dict.fromkeys([*self.output_ranges, *self.input_ranges]):
            output_range = self.output_ranges.get(name)
            input_range = self.input_ranges.get(name)
            if name in slots:
                layer = slots[name]
                layer.output_quant = output_range
                layer.input_quant = input_range
                continue
            module = self.graph.nodes[name].module
            if next(iter(module.state_dict()), None) is not None:
                left_float.append(f"{name} ({type(module).__name__}, has state)")
                continue
            layer = QuantizedLayer(module, input_range, output_range)
            layer.train(module.training)
            slots[name] = layer
        for name, node in self.graph.nodes.items():
            if self.kinds[name] != WEIGHT:
                continue
            bn_name = self.bn_of_conv.get(name)
            source = self.input_ranges.get(name)
            if source is None and node.inputs:
                source = self.range_of_output(node.inputs[0])
            output_range = self._block_output_range(bn_name or name)
            slots[name].pair_with(slots[bn_name] if bn_name else None, source, output_range)
        for name, kind in self.kinds.items():
            if kind == OTHER:
                left_float.append(f"{name} ({type(self.graph.nodes[name].module).__name__})")
        return slots, left_float


def _validate(model: nn.Module, graph: LeafGraph) -> None:
    if is_quantized(model):
        raise QuantizationConfigError(
            f"{type(model).__name__} already holds quantization modules (PACT2, QuantConv2d, "
            f"...): wrap the float model, or load a QAT checkpoint into a freshly wrapped one"
        )
    if not graph.nodes:
        raise QuantizationConfigError(
            f"{type(model).__name__} has no leaf modules to quantize: wrap a model built from "
            f"layers (e.g. an nn.Sequential holding the layer)"
        )
    reused = [f"{n.name} ({n.calls} calls)" for n in graph.nodes.values() if n.calls > 1]
    if reused:
        raise ModuleOnlyViolationError(
            f"modules used more than once in one forward: {', '.join(reused)}; quantization "
            f"needs one range per use, so give each use its own module instance"
        )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def _device_of(model: nn.Module, example_input: Any) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers(), *iter_tensors(example_input)):
        return tensor.device
    return torch.device("cpu")


def insert_quantization(
    model: nn.Module, example_input: Tensor | tuple[Any, ...], config: QuantizationConfig
) -> nn.Module:
    """Quantize `model` in place (same object, same state_dict keys plus ranges) and return it."""
    graph = trace_leaf_graph(model, example_input)
    _validate(model, graph)
    planner = _Planner(graph, config, _device_of(model, example_input))
    planner.plan()
    slots, left_float = planner.build()
    for name, module in slots.items():
        _set_submodule(model, name, module)
    if left_float:
        logger.warning(
            "%s: these layers stay in float and their outputs get no range of their own: %s",
            type(model).__name__,
            "; ".join(left_float),
        )
    return model


def quant_batch_norms(model: nn.Module) -> list[nn.Module]:
    """The QAT BatchNorms of a quantized model."""
    return [m for m in model.modules() if isinstance(m, QuantBatchNormMixin)]


def activation_ranges(model: nn.Module) -> list[PACT2]:
    """Every PACT2 of a quantized model."""
    return [m for m in model.modules() if isinstance(m, PACT2)]
