"""Per-layer bit widths: a global entry, then rules by module type, by glob, by exact name.

Like torch.ao's QConfigMapping, a layer takes the most specific rule that matches it (exact
module name, then a glob of names, then a module type; within one kind the later rule wins),
else the config's global widths. The planner resolves the rules once into a per-layer table;
each unit and range is built with its own width, and the export records the widths per
tensor. Mixed widths are 8 and 16 bits, the two TIDL runs (its 16-bit name lists).
"""

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from edgezoo.errors import QuantizationConfigError

__all__ = ["TIDL_LAYER_BITWIDTHS", "LayerBits", "LayerRule", "layer_rules", "resolve_layer_bits"]

TIDL_LAYER_BITWIDTHS = (8, 16)
"""The widths a layer may have in a mixed-precision model: TIDL's 8-bit default and the 16-bit
layers its options list."""

_EXACT, _GLOB, _TYPE = 3, 2, 1


@dataclass(frozen=True)
class LayerRule:
    """Widths for the layers `match` names: a module name, a glob of names ("layer1.*") or a
    module type's class name ("Conv2d"). None leaves that width to less specific rules."""

    match: str
    bitwidth_weights: int | None = None
    bitwidth_activations: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.match, str) or not self.match:
            raise QuantizationConfigError(
                f"a layer rule matches a module name, glob or type name, got {self.match!r}"
            )
        for width in (self.bitwidth_weights, self.bitwidth_activations):
            if width is not None and width not in TIDL_LAYER_BITWIDTHS:
                raise QuantizationConfigError(
                    f"layer rule {self.match!r}: a layer's bit width is 8 or 16 (TIDL's two), "
                    f"got {width!r}"
                )

    def specificity(self, name: str, module: nn.Module) -> int:
        """How specifically the rule names this layer (0: it does not match)."""
        if self.match == name:
            return _EXACT
        if any(c in self.match for c in "*?[") and fnmatch.fnmatchcase(name, self.match):
            return _GLOB
        if self.match in {cls.__name__ for cls in type(module).__mro__}:
            return _TYPE
        return 0


@dataclass(frozen=True)
class LayerBits:
    """The widths one layer resolved to, and whether a rule (not the global entry) chose them."""

    weights: int
    activations: int
    ruled: bool = False


def layer_rules(
    layer_bits: Mapping[str, int] | None, rules: Iterable[LayerRule | Mapping[str, Any]]
) -> tuple[LayerRule, ...]:
    """The config's rules in order: `rules` (LayerRule or its dict form, as checkpoints save
    it), then the short form `layer_bits` (name or glob -> width of weights and activations)."""
    built = [r if isinstance(r, LayerRule) else _rule_from_dict(r) for r in rules]
    for match, width in (layer_bits or {}).items():
        built.append(LayerRule(match, width, width))
    return tuple(built)


def _rule_from_dict(rule: Any) -> LayerRule:
    if not isinstance(rule, Mapping):
        raise QuantizationConfigError(
            f"layer_rules holds LayerRule(match, bitwidth_weights, bitwidth_activations) "
            f"entries (or their dicts), got {rule!r}"
        )
    try:
        return LayerRule(**rule)
    except TypeError as err:
        raise QuantizationConfigError(f"layer rule {dict(rule)!r}: {err}") from err


def resolve_layer_bits(
    rules: tuple[LayerRule, ...], leaves: Mapping[str, nn.Module], weights: int, activations: int
) -> dict[str, LayerBits]:
    """Each leaf's widths under the rules (global widths where none matches); a rule that
    matches no leaf is refused, naming a few leaves, since it would quietly change nothing."""
    table, used = {}, set()
    for name, module in leaves.items():
        bits = LayerBits(weights, activations)
        best = {"weights": 0, "activations": 0}
        for index, rule in enumerate(rules):
            level = rule.specificity(name, module)
            if not level:
                continue
            used.add(index)
            if rule.bitwidth_weights is not None and level >= best["weights"]:
                best["weights"] = level
                bits = LayerBits(rule.bitwidth_weights, bits.activations, True)
            if rule.bitwidth_activations is not None and level >= best["activations"]:
                best["activations"] = level
                bits = LayerBits(bits.weights, rule.bitwidth_activations, True)
        table[name] = bits
    unused = [rules[i].match for i in range(len(rules)) if i not in used]
    if unused:
        shown = ", ".join(list(leaves)[:6])
        raise QuantizationConfigError(
            f"layer rule(s) {', '.join(map(repr, unused))} match no layer of the model; name "
            f"modules as model.named_modules() does (e.g. {shown}), a glob of them, or a "
            "module type such as 'Conv2d'"
        )
    return table
