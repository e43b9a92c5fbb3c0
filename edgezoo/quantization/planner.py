"""Turn a module-only float model into its QAT form in place, keeping every state_dict key.

From the leaf graph of one forward (graph.py) the rules of TI's v1 design are applied:
- each ReLU / ReLU6 becomes an unsigned PACT2 in its slot (ReLU6 becomes a learned
  power-of-two clip);
- each Conv2d / Linear becomes a unit (weight_layers.py) sharing its parameter tensors; a Conv2d
  whose only consumer is a BatchNorm2d beside it folds that BN, whose slot becomes nn.Identity;
- a unit output that no activation reads gets a signed PACT2; AddBlock / CatBlock / MulBlock,
  Sigmoid / Hardsigmoid gates and non-global pools not followed by an activation get one too
  (signed decided by the data);
- the model input gets a PACT2 in each layer that reads it, and the model outputs get one
  when `quantize_output` is set. Resize, Flatten, global pooling and dropout get no new range.

Every unit is built with its parts (folded BN, ranges, input grid) as constructor arguments;
nothing is assigned onto a module afterwards. Each replacement takes the slot (parent
attribute) of the module it replaces and holds the very same parameter and buffer tensors, so
an optimizer built before wrapping still holds the right tensors, and the state_dict keys of
the float model stay as they were (the units' state-dict hooks keep a folded BN under its own
name). No hook runs in the training path.
"""

import logging
from typing import Any

import torch
from torch import Tensor, nn

from edgezoo.conversion.plain_layers import plain_base
from edgezoo.errors import ModuleOnlyViolationError, QuantizationConfigError
from edgezoo.layers import AddBlock, CatBlock, MulBlock, ResizeWith
from edgezoo.quantization.affine import AFFINE_SCALES
from edgezoo.quantization.batch_norm import (
    FOLDABLE_BATCH_NORMS,
    QUANT_BATCH_NORMS,
)
from edgezoo.quantization.config import QuantizationConfig
from edgezoo.quantization.graph import LeafGraph, LeafNode, trace_leaf_graph
from edgezoo.quantization.layer_spec import resolve_layer_bits
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.parameter_free import InputGridLayer, QuantizedLayer, makes_new_values
from edgezoo.quantization.quantized_model import refuse_quantized
from edgezoo.quantization.weight_layers import (
    QuantConv2d,
    QuantLinear,
    QuantWeightMixin,
    is_depthwise,
    load_folded_bn_under_its_name,
)

logger = logging.getLogger(__name__)

ACTIVATION, WEIGHT, NORM, MERGE, POOL, GATE, PASSTHROUGH, OTHER = (
    "activation",
    "weight",
    "norm",
    "merge",
    "pool",
    "gate",
    "passthrough",
    "other",
)
_GATE_TYPES = (nn.Sigmoid, nn.Hardsigmoid, nn.LeakyReLU)
"""Element-wise non-linearities TIDL runs whose output needs a range of its own, not a clip of
their input: the gates (outputs in [0, 1]) and LeakyReLU (a ReLU-style clip would cut off its
negative side)."""

_QUANT_WEIGHT_LAYERS: dict[type[nn.Module], type[QuantWeightMixin]] = {
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


def is_global_pool(module: nn.Module) -> bool:
    """AdaptiveAvgPool2d to 1x1: its output stays inside its input's range, so no new range."""
    size = getattr(module, "output_size", None)
    return isinstance(module, nn.AdaptiveAvgPool2d) and size in (1, (1, 1), [1, 1])


def layer_kind(module: nn.Module) -> str:
    """How quantization treats a leaf module (one of the kind constants of this file)."""
    if type(module) in (nn.ReLU, nn.ReLU6):
        return ACTIVATION
    if plain_base(module) in _QUANT_WEIGHT_LAYERS:
        return WEIGHT
    if type(module) in QUANT_BATCH_NORMS:
        return NORM
    if isinstance(module, AddBlock | CatBlock | MulBlock):
        return MERGE
    if type(module) in _GATE_TYPES:
        return GATE
    if isinstance(module, _PASSTHROUGH_TYPES) or is_global_pool(module):
        return PASSTHROUGH
    if isinstance(module, _POOL_TYPES):
        return POOL
    return OTHER


class _Planner:
    """Decide, from the leaf graph, where ranges go, then build every unit with its parts."""

    def __init__(
        self,
        graph: LeafGraph,
        model: nn.Module,
        config: QuantizationConfig,
        keep_missing_ranges: bool,
        range_update_gap: int,
        learn_ranges: bool = False,
    ) -> None:
        self.graph = graph
        self.model = model
        self.config = config
        self.keep_missing_ranges = keep_missing_ranges
        self.range_update_gap = range_update_gap
        self.learn_ranges = learn_ranges
        self.device = _device_of(model)
        self.kinds = {name: layer_kind(node.module) for name, node in graph.nodes.items()}
        self.bn_of_conv = self._pair_conv_bn()
        self.conv_of_bn = {bn: conv for conv, bn in self.bn_of_conv.items()}
        leaves = {name: node.module for name, node in graph.nodes.items()}
        self.bits = resolve_layer_bits(
            config.rules, leaves, config.bitwidth_weights, config.bitwidth_activations
        )
        self.activations: dict[str, PACT2] = {}
        self.output_ranges: dict[str, PACT2] = {}
        self.input_ranges: dict[str, PACT2] = {}

    def new_range(self, signed: bool | None, like: nn.Module, reader: str | None) -> PACT2:
        """A range for the output of `reader` (None: the model input), at its layer's width."""
        config = self.config
        affine = config.activation_scales == AFFINE_SCALES
        bits = config.bitwidth_activations if reader is None else self.activation_bits(reader)
        pact = PACT2(
            signed=signed,
            bitwidth=bits,
            range_shrink_percentile=config.range_shrink_percentile,
            keep_when_missing=self.keep_missing_ranges,
            max_update_gap=self.range_update_gap,
            rounding_mode=config.rounding_mode,
            scales=config.activation_scales,
            asymmetric=affine and reader is not None and not self._feeds_symmetric_op(reader),
            learn_range=self.learn_ranges,
        ).to(self.device)
        pact.train(like.training)
        return pact

    def activation_bits(self, name: str) -> int:
        """The width of the output of `name`: its rule's, else, for a layer TIDL runs at its
        input's precision (activation, gate, max pool, pass-through, a folded BatchNorm: the
        layer it merges into), its producer's, else the global width."""
        own = self.bits[name]
        if own.ruled:
            return own.activations
        if name in self.conv_of_bn:
            return self.activation_bits(self.conv_of_bn[name])
        module, node = self.graph.nodes[name].module, self.graph.nodes[name]
        inherits = self.kinds[name] in (ACTIVATION, GATE, PASSTHROUGH) or isinstance(
            module, nn.MaxPool2d | nn.AdaptiveMaxPool2d
        )
        if inherits and node.inputs and node.inputs[0] in self.graph.nodes:
            return self.activation_bits(node.inputs[0])
        return own.activations

    def _feeds_symmetric_op(self, name: str) -> bool:
        """Whether the output of `name` reaches a pool or resize (looking through flatten and
        dropout): TIDL runs those on symmetric grids only."""
        pending = list(self.graph.nodes[name].consumers)
        while pending:
            node = self.graph.nodes[pending.pop()]
            module = node.module
            if self.kinds[node.name] == POOL or is_global_pool(module):
                return True
            if isinstance(module, ResizeWith | nn.Upsample):
                return True
            if self.kinds[node.name] == PASSTHROUGH:
                pending.extend(node.consumers)
        return False

    def _pair_conv_bn(self) -> dict[str, str]:
        """Conv2d -> BatchNorm2d (or torchvision's FrozenBatchNorm2d) it folds: its only
        consumer, reading only the conv, registered after it in the same parent (so the BN's
        entries can stay under the BN's name)."""
        pairs = {}
        for name, node in self.graph.nodes.items():
            if type(node.module) is not nn.Conv2d or len(node.consumers) != 1 or node.is_output:
                continue
            consumer = self.graph.nodes[node.consumers[0]]
            bn = consumer.module
            if (
                type(bn) in FOLDABLE_BATCH_NORMS
                and getattr(bn, "track_running_stats", True)
                and consumer.inputs == (name,)
                and bn.running_mean.shape[0] == node.module.out_channels
                and _is_later_sibling(self.model, name, consumer.name)
            ):
                pairs[name] = consumer.name
        return pairs

    def _needs_range(self, node: LeafNode) -> bool:
        """A new range after this output, unless activations (which become ranges) read it."""
        if node.consumers:
            return not all(self.kinds[c] == ACTIVATION for c in node.consumers)
        return node.is_output and self.config.quantize_output

    def plan_ranges(self) -> None:
        """Create every range: activations, outputs of units and merges, the model input."""
        for name, node in self.graph.nodes.items():
            kind, module = self.kinds[name], node.module
            if kind == ACTIVATION:
                self.activations[name] = self.new_range(False, module, name)
            elif kind in (WEIGHT, NORM) and name not in self.bn_of_conv and self._needs_range(node):
                owner = self.conv_of_bn.get(name, name)
                self.output_ranges[owner] = self.new_range(True, module, name)
            elif kind in (MERGE, POOL, GATE) and self._needs_range(node):
                self.output_ranges[name] = self.new_range(None, module, name)
        if self.config.quantize_output:
            self._plan_output_ranges()
        if self.config.quantize_input:
            for name in self.graph.input_consumers:
                if self.kinds[name] != ACTIVATION:
                    module = self.graph.nodes[name].module
                    self.input_ranges[name] = self.new_range(None, module, None)

    def _plan_output_ranges(self) -> None:
        """A range on each model output that is not already one (quantize_output)."""
        for name in self.graph.output_producers:
            if name not in self.graph.nodes or self.kinds[name] == ACTIVATION:
                continue
            owner = self.conv_of_bn.get(name, name)
            if owner in self.output_ranges:
                continue
            signed = True if self.kinds[name] in (WEIGHT, NORM) else None
            module = self.graph.nodes[name].module
            self.output_ranges[owner] = self.new_range(signed, module, name)

    def range_of_output(self, producer: str) -> PACT2 | None:
        """The range whose grid a producer's output lies on, looking through pass-through ops."""
        while producer in self.graph.nodes:
            if self.kinds[producer] == ACTIVATION:
                return self.activations[producer]
            owner = self.conv_of_bn.get(producer, producer)
            if owner in self.output_ranges:
                return self.output_ranges[owner]
            node = self.graph.nodes[producer]
            if self.kinds[producer] != PASSTHROUGH or not node.inputs:
                return None
            if producer in self.input_ranges:
                return self.input_ranges[producer]
            producer = node.inputs[0]
        return None

    def build(self) -> tuple[dict[str, nn.Module], list[str]]:
        """The module for every slot that changes, and the leaves left unquantized."""
        slots: dict[str, nn.Module] = dict(self.activations)
        left_float = []
        for name, node in self.graph.nodes.items():
            kind, module = self.kinds[name], node.module
            if kind == WEIGHT:
                slots[name] = self._weight_unit(name, node)
                if name in self.bn_of_conv:
                    slots[self.bn_of_conv[name]] = nn.Identity()
            elif kind == NORM and name not in self.conv_of_bn:
                slots[name] = QUANT_BATCH_NORMS[type(module)].from_float(
                    module, self.input_ranges.get(name), self.output_ranges.get(name)
                )
            elif name in self.output_ranges or name in self.input_ranges:
                if next(iter(module.state_dict()), None) is not None:
                    left_float.append(f"{name} ({type(module).__name__}, has state)")
                    continue
                slots[name] = QuantizedLayer(
                    module, self.input_ranges.get(name), self.output_ranges.get(name)
                )
            elif kind == PASSTHROUGH and makes_new_values(module) and node.inputs:
                grid = self.range_of_output(node.inputs[0])
                if grid is not None:
                    slots[name] = InputGridLayer(module, grid)
            if kind == OTHER:
                left_float.append(f"{name} ({type(module).__name__})")
        return slots, left_float

    def _weight_unit(self, name: str, node: LeafNode) -> QuantWeightMixin:
        module, config = node.module, self.config
        per_channel = config.per_channel_weights or (
            config.per_channel_depthwise and isinstance(module, nn.Conv2d) and is_depthwise(module)
        )
        bn_name = self.bn_of_conv.get(name)
        bn = None
        if bn_name is not None:
            bn = (bn_name.rpartition(".")[2], self.graph.nodes[bn_name].module)
        grid = self.range_of_output(node.inputs[0]) if node.inputs else None
        weight_bits = self.bits[name].weights
        # The bias grid follows the layer's widest operand: 2*b-1 bits, b = max(w, input).
        source = self.input_ranges.get(name) or grid
        input_bits = source.bitwidth if source is not None else self.activation_bits(name)
        return _QUANT_WEIGHT_LAYERS[plain_base(module)].from_float(
            module,
            bitwidth=weight_bits,
            per_channel=per_channel,
            bias_bitwidth=max(weight_bits, input_bits),
            bias_rule=config.biases,
            bn=bn,
            input_quant=self.input_ranges.get(name),
            output_quant=self.output_ranges.get(name),
            input_grid=grid,
        )


def _is_later_sibling(model: nn.Module, first: str, second: str) -> bool:
    """Whether `second` is registered after `first` in the same parent module."""
    first_parent, _, first_child = first.rpartition(".")
    second_parent, _, second_child = second.rpartition(".")
    if first_parent != second_parent:
        return False
    parent = model.get_submodule(first_parent)
    children = [n for n, _ in parent.named_modules(remove_duplicate=False) if n and "." not in n]
    return children.index(first_child) < children.index(second_child)


def _validate(model: nn.Module, graph: LeafGraph) -> None:
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


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def insert_quantization(
    model: nn.Module,
    example_input: Tensor | tuple[Any, ...],
    config: QuantizationConfig,
    keep_missing_ranges: bool = True,
    range_update_gap: int | None = None,
    learn_ranges: bool = False,
) -> nn.Module:
    """Quantize `model` in place (same object, same state_dict keys plus ranges) and return it.

    keep_missing_ranges: whether a later load of a state_dict without some range's entries
    keeps that range (float checkpoints into a model to train) or fails (evaluation).
    range_update_gap: the ranges' max_update_gap (default: config.max_range_update_gap).
    learn_ranges: ranges trained by gradient (QAT with config.learn_ranges).
    """
    gap = config.max_range_update_gap if range_update_gap is None else range_update_gap
    refuse_quantized(model)
    graph = trace_leaf_graph(model, example_input)
    _validate(model, graph)
    planner = _Planner(graph, model, config, keep_missing_ranges, gap, learn_ranges)
    planner.plan_ranges()
    slots, left_float = planner.build()
    for name, module in slots.items():
        _set_submodule(model, name, module)
    for conv, bn in planner.bn_of_conv.items():
        parent, _, conv_slot = conv.rpartition(".")
        load_folded_bn_under_its_name(model.get_submodule(parent), conv_slot, bn.rpartition(".")[2])
    if left_float:
        logger.warning(
            "%s: these layers stay in float and their outputs get no range of their own: %s",
            type(model).__name__,
            "; ".join(left_float),
        )
    return model
