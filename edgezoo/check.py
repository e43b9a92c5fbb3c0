"""check_model: a module-only and TIDL lint that runs one forward and reports what would break.

Quantization gives every module its own activation range, so a model is only QAT-ready when each
range-changing op runs inside a module of its own and no module instance is used twice. The lint
watches one eval-mode forward through forward hooks (which module is executing) and a
TorchFunctionMode (which ops run, and where in the Python source they were called).
"""

import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.overrides import TorchFunctionMode

import edgezoo.layers
from edgezoo.conversion.inplace import inplace_dependent_modules
from edgezoo.conversion.norm_act import is_norm_act
from edgezoo.conversion.training_branches import user_call_site
from edgezoo.errors import ModuleOnlyViolationError, TIDLRuleError
from edgezoo.layers import SELF_GATED, validate_resize
from edgezoo.module_state import kept_modes
from edgezoo.tidl.rules import (
    CONCAT_RULE,
    DEPTHWISE_RULE,
    LINT_TIDL_RULES,
    RESIZE_RULE,
    TIDL_DEPTHWISE_KERNEL_STRIDE,
)

ROOT_NAME = "<root>"


_RELU_ADVICE = "use an nn.ReLU module, one instance per use"
_CLIP_ADVICE = "use an nn.ReLU6 or nn.Hardtanh module, one instance per use"
_ADD_ADVICE = "use edgezoo.layers.AddBlock"
_OWN_MODULE_ADVICE = "move it into a module of its own so quantization gives it its own range"
_CAT_ADVICE = "use edgezoo.layers.CatBlock"
_MUL_ADVICE = (
    "use edgezoo.layers.MulBlock for a product of two tensors (a gate or per-channel scale); "
    "fold a constant factor into the layer before it"
)
_RESIZE_ADVICE = "use edgezoo.layers.ResizeWith"

# Range-changing ops that must run inside a module: op name -> (what the user wrote, what to do).
# Tensor operators reach TorchFunctionMode as the method they stand for (`a + b` as Tensor.add,
# `a += b` as Tensor.add_), so the names cover the operator, torch.* and Tensor.* spellings.
_WATCHED_OPS: dict[str, tuple[str, str]] = {
    "relu": ("relu", _RELU_ADVICE),
    "relu_": ("relu_", _RELU_ADVICE),
    "relu6": ("relu6", "use an nn.ReLU6 module, one instance per use"),
    "hardtanh": ("hardtanh", _CLIP_ADVICE),
    "hardtanh_": ("hardtanh_", _CLIP_ADVICE),
    "clamp": ("clamp", _CLIP_ADVICE),
    "clamp_": ("clamp_", _CLIP_ADVICE),
    "clip": ("clip", _CLIP_ADVICE),
    "clip_": ("clip_", _CLIP_ADVICE),
    "clamp_min": ("clamp_min", _CLIP_ADVICE),
    "clamp_max": ("clamp_max", _CLIP_ADVICE),
    "leaky_relu": ("leaky_relu", "use an nn.LeakyReLU module, one instance per use"),
    "hardswish": ("hardswish", "use edgezoo.layers.SelfGate(nn.Hardsigmoid()), one per use"),
    "hardsigmoid": ("hardsigmoid", "use an nn.Hardsigmoid module, one instance per use"),
    "sigmoid": ("sigmoid", "use an nn.Sigmoid module, one instance per use"),
    "silu": ("silu", "use edgezoo.layers.SelfGate(nn.Sigmoid()), one instance per use"),
    "add": ("add (`+`)", _ADD_ADVICE),
    "add_": ("in-place add (`+=`)", _ADD_ADVICE),
    "__radd__": ("add (`+`)", _ADD_ADVICE),
    "sub": ("sub (`-`)", _OWN_MODULE_ADVICE),
    "sub_": ("in-place sub (`-=`)", _OWN_MODULE_ADVICE),
    "__rsub__": ("sub (`-`)", _OWN_MODULE_ADVICE),
    "rsub": ("sub (`-`)", _OWN_MODULE_ADVICE),
    "mul": ("mul (`*`)", _MUL_ADVICE),
    "mul_": ("in-place mul (`*=`)", _MUL_ADVICE),
    "__rmul__": ("mul (`*`)", _MUL_ADVICE),
    "div": ("div (`/`)", _OWN_MODULE_ADVICE),
    "div_": ("in-place div (`/=`)", _OWN_MODULE_ADVICE),
    "__rdiv__": ("div (`/`)", _OWN_MODULE_ADVICE),
    "__rtruediv__": ("div (`/`)", _OWN_MODULE_ADVICE),
    "cat": ("cat", _CAT_ADVICE),
    "concat": ("concat", _CAT_ADVICE),
    "concatenate": ("concatenate", _CAT_ADVICE),
    "stack": ("stack", _CAT_ADVICE),
    "interpolate": ("interpolate", _RESIZE_ADVICE),
    "upsample": ("upsample", _RESIZE_ADVICE),
    "upsample_nearest": ("upsample_nearest", _RESIZE_ADVICE),
    "upsample_bilinear": ("upsample_bilinear", _RESIZE_ADVICE),
    "adaptive_avg_pool2d": ("adaptive_avg_pool2d", "use an nn.AdaptiveAvgPool2d module"),
    "adaptive_max_pool2d": ("adaptive_max_pool2d", "use an nn.AdaptiveMaxPool2d module"),
    "avg_pool2d": ("avg_pool2d", "use an nn.AvgPool2d module"),
    "max_pool2d": ("max_pool2d", "use an nn.MaxPool2d module"),
    "max_pool2d_with_indices": ("max_pool2d", "use an nn.MaxPool2d module"),
    "mean": (
        "mean",
        "use an nn.AdaptiveAvgPool2d(1) module (TIDL runs GlobalAveragePool, not ReduceMean)",
    ),
}
_RESIZE_OPS = frozenset({"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"})
_CONCAT_OPS = frozenset({"cat", "concat", "concatenate", "stack"})

# Frames to step over when naming the source line that made a call: torch's own wrappers, this
# lint, and edgezoo's layer helpers (so a functional resize_with points at its caller).
_SKIPPED_SOURCE_PREFIXES = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(edgezoo.layers.__file__) + os.sep,
)


@dataclass(frozen=True)
class Violation:
    """One broken rule: which rule, in which module, where in the source, and what to do."""

    rule: str
    module: str
    message: str
    location: str | None = None
    other_modules: tuple[str, ...] = ()

    @property
    def is_tidl_rule(self) -> bool:
        """A rule of TIDL's import (the model quantizes, but TIDL would not run it as is)."""
        return self.rule in LINT_TIDL_RULES

    def __str__(self) -> str:
        where = self.module
        if self.other_modules:
            shown = ", ".join(self.other_modules[:3])
            more = len(self.other_modules) - 3
            where += f" (and {shown}{f' and {more} more' if more > 0 else ''})"
        location = _short_path(self.location) if self.location else "unknown location"
        return f"[{self.rule}] {where} at {location}: {self.message}"


@dataclass
class CheckReport:
    """The violations one check_model run found; ok when there are none."""

    violations: list[Violation] = field(default_factory=list)
    model_name: str = "model"
    tidl_rules_checked: bool = True

    @property
    def ok(self) -> bool:
        """True when the model follows every checked rule."""
        return not self.violations

    def __str__(self) -> str:
        if self.ok and self.tidl_rules_checked:
            return f"{self.model_name}: no module-only or TIDL violations"
        if self.ok:
            return f"{self.model_name}: no module-only violations (TIDL rules not checked)"
        count = len(self.violations)
        lines = [f"{self.model_name}: {count} violation{'s' if count > 1 else ''}"]
        lines += [f"  {violation}" for violation in self.violations]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise ModuleOnlyViolationError listing every violation, unless the report is ok."""
        if not self.ok:
            raise ModuleOnlyViolationError(str(self))


def check_model(
    model: nn.Module,
    example_input: Tensor | tuple[Any, ...],
    tidl_rules: bool = True,
) -> CheckReport:
    """Run one eval-mode forward of `model` and report module-only (and TIDL) rule violations.

    `example_input` is one tensor or a tuple of positional arguments (wrap a tuple the model
    takes as one argument in another tuple). The model's train/eval flags are restored
    afterwards and every hook is removed, also when the forward raises.
    `tidl_rules=False` keeps only the module-only rules that quantization itself needs.
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    names = _module_names(model)
    collector = _Collector()
    tracer = _ForwardTracer(names, collector, tidl_rules)
    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(tracer.enter, prepend=True))
            handles.append(module.register_forward_hook(tracer.leave, always_call=True))
        with kept_modes(model), torch.no_grad(), _OpWatcher(tracer):
            model.eval()
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    tracer.report_reused_modules()
    _check_inplace_modules(model, inputs, tracer.first_call_site, collector)
    if tidl_rules:
        _check_depthwise_convs(model, names, tracer.first_call_site, collector)
    return CheckReport(collector.violations(), type(model).__name__, tidl_rules)


INPLACE_RULE = "inplace-read"


def _check_inplace_modules(
    model: nn.Module,
    inputs: tuple[Any, ...],
    call_site: Callable[[nn.Module], str | None],
    collector: "_Collector",
) -> None:
    """In-place modules a later read of their input depends on (the model's output changes when
    one computes out of place, as its quantized replacement does)."""

    def run() -> object:
        with kept_modes(model), torch.no_grad():
            model.eval()
            return model(*inputs)

    for name in inplace_dependent_modules(model, run):
        message = (
            f"{name} computes in place and a later read of its input depends on it; its "
            "quantized replacement computes out of place: read its output instead (or let "
            "make_module_only point those reads at it)"
        )
        collector.add(INPLACE_RULE, name, message, call_site(model.get_submodule(name)))


class _Collector:
    """Merge identical violations from one call site, keeping the order they were found in."""

    def __init__(self) -> None:
        self._modules: dict[tuple[str, str | None, str], list[str]] = {}

    def add(self, rule: str, module: str, message: str, location: str | None) -> None:
        modules = self._modules.setdefault((rule, location, message), [])
        if module not in modules:
            modules.append(module)

    def violations(self) -> list[Violation]:
        return [
            Violation(rule, modules[0], message, location, tuple(modules[1:]))
            for (rule, location, message), modules in self._modules.items()
        ]


class _ForwardTracer:
    """Track which module is executing, count module calls, and judge each watched op."""

    def __init__(self, names: dict[int, list[str]], collector: _Collector, tidl_rules: bool):
        self._names = names
        self._collector = collector
        self._tidl_rules = tidl_rules
        self._stack: list[nn.Module] = []
        self._call_sites: dict[nn.Module, list[str | None]] = {}

    def enter(self, module: nn.Module, _args: object) -> None:
        self._stack.append(module)
        self._call_sites.setdefault(module, []).append(_call_site())
        if is_norm_act(module):
            message = (
                f"{type(module).__name__} applies its activation inside the BatchNorm: "
                "quantization needs them apart (the BN folds into the conv, the activation "
                "gets a range); make_module_only splits it, or use nn.BatchNorm2d + activation"
            )
            self._collector.add("norm-act", self._name_of(module), message, _call_site())
        if type(module) in SELF_GATED:
            message = (
                f"{type(module).__name__} is x * gate(x): quantization needs the gate and the "
                "product apart (each gets a range; TIDL runs them as its Sigmoid/HardSigmoid "
                "and Mul); make_module_only splits it, or use edgezoo.layers.SelfGate"
            )
            self._collector.add("self-gate", self._name_of(module), message, _call_site())

    def leave(self, module: nn.Module, _args: object, _output: object) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    def first_call_site(self, module: nn.Module) -> str | None:
        sites = self._call_sites.get(module)
        return sites[0] if sites else None

    def on_op(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        name = getattr(func, "__name__", "")
        if name not in _WATCHED_OPS or not self._stack:
            return
        if not any(t.is_floating_point() for t in _tensors_in(args, kwargs)):
            return  # index and mask arithmetic never reaches a quantized graph
        module = self._stack[-1]
        module_name = self._name_of(module)
        location = _call_site()
        if not _may_run_ops(module):
            spelled, advice = _WATCHED_OPS[name]
            message = (
                f"{spelled} runs in {type(module).__name__}.forward, a container, instead of "
                f"inside a module: {advice}"
            )
            self._collector.add("functional-op", module_name, message, location)
        if not self._tidl_rules:
            return
        if name in _RESIZE_OPS:
            problem = _resize_problem(func, args, kwargs)
            if problem:
                self._collector.add(RESIZE_RULE, module_name, problem, location)
        elif name in _CONCAT_OPS and _concatenates_batch_axis(name, args, kwargs):
            message = (
                f"{name} on the batch axis (dim 0): TIDL's Concat cannot run on the batch axis; "
                f"concatenate on the channel axis (dim=1), e.g. with edgezoo.layers.CatBlock"
            )
            self._collector.add(CONCAT_RULE, module_name, message, location)

    def report_reused_modules(self) -> None:
        for module, sites in self._call_sites.items():
            if len(sites) < 2:
                continue
            aliases = self._names.get(id(module), [ROOT_NAME])
            distinct_sites = ", ".join(dict.fromkeys(_short_path(site) for site in sites))
            kind = type(module).__name__
            prefix = "nn." if type(module).__module__.startswith("torch.nn") else ""
            registered = f" (registered as {', '.join(aliases)})" if len(aliases) > 1 else ""
            message = (
                f"{kind} instance{registered} called {len(sites)} times in one forward "
                f"(at {distinct_sites}): quantization needs one range per use, so give each "
                f"use its own {prefix}{kind} instance"
            )
            self._collector.add("reused-module", aliases[0], message, sites[1])

    def _name_of(self, module: nn.Module) -> str:
        return self._names.get(id(module), [ROOT_NAME])[0]


class _OpWatcher(TorchFunctionMode):
    """Hand every torch.*, F.* and Tensor op of the forward to the tracer, then run it."""

    def __init__(self, tracer: _ForwardTracer) -> None:
        super().__init__()
        self._tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._tracer.on_op(func, args, kwargs)
        return func(*args, **kwargs)


def _module_names(model: nn.Module) -> dict[int, list[str]]:
    """Map each module instance to every qualified name it is registered under."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name or ROOT_NAME)
    return names


def _may_run_ops(module: nn.Module) -> bool:
    """Leaf modules and edgezoo's layer blocks are where range-changing ops belong."""
    is_leaf = next(module.children(), None) is None
    return is_leaf or type(module).__module__.startswith(edgezoo.layers.__name__ + ".")


def _call_site() -> str | None:
    """file:line of the innermost source frame outside torch, edgezoo.layers and this lint."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != __file__ and not filename.startswith(_SKIPPED_SOURCE_PREFIXES):
            return _traced_call_site(frame) or f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _traced_call_site(frame: FrameType) -> str | None:
    """In the code torch.fx generated for a converted model, the user's line that the running
    op was traced from (the generated line itself says nothing to the user)."""
    module = frame.f_locals.get("self")
    lines = getattr(module, "_lineno_map", None)
    if not isinstance(module, fx.GraphModule) or not lines:
        return None
    index = lines.get(frame.f_lineno - frame.f_code.co_firstlineno)
    nodes = list(module.graph.nodes)
    return user_call_site(nodes[index]) if index is not None and index < len(nodes) else None


def _short_path(location: str | None) -> str:
    """A location as a user reads it: inside site-packages or below the working directory."""
    if location is None:
        return "unknown"
    marker = os.sep + "site-packages" + os.sep
    if marker in location:
        return location.split(marker, 1)[1]
    cwd = os.getcwd() + os.sep
    return location[len(cwd) :] if location.startswith(cwd) else location


def _tensors_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Tensor]:
    """Tensors among the arguments, looking one level into lists and tuples (cat's input)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, list | tuple):
            yield from (item for item in value if isinstance(item, Tensor))


def _resize_problem(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str | None:
    """Describe why TIDL's Resize cannot run this interpolate call, or None if it can."""
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None  # not a call torch itself would accept; the forward reports that
    bound.apply_defaults()
    params = bound.arguments
    if params.get("size") is not None:
        return (
            f"resize with size={params['size']!r}: TIDL's Resize does not support a sizes "
            f"input; use a power-of-two scale_factor, e.g. edgezoo.layers.ResizeWith"
        )
    if params.get("antialias"):
        return "resize with antialias=True: TIDL's Resize needs antialias off"
    scale = params.get("scale_factor")
    if isinstance(scale, list | tuple) and len(set(scale)) == 1:
        scale = scale[0]
    try:
        validate_resize(scale, params.get("mode", "nearest"), params.get("align_corners"))
    except TIDLRuleError as err:
        return f"{err}; see edgezoo.layers.ResizeWith"
    return None


def _concatenates_batch_axis(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """True when a cat/stack call joins its inputs along axis 0 of an output of rank >= 2."""
    tensors = args[0] if args else kwargs.get("tensors", ())
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
    if not tensors or not isinstance(tensors[0], Tensor) or not isinstance(dim, int):
        return False
    rank = tensors[0].dim() + (1 if name == "stack" else 0)
    return rank >= 2 and dim % rank == 0


def _check_depthwise_convs(
    model: nn.Module,
    names: dict[int, list[str]],
    call_site: Callable[[nn.Module], str | None],
    collector: _Collector,
) -> None:
    """Report depthwise convs whose kernel and stride TIDL cannot run."""
    allowed = ", ".join(f"{k}x{k}s{s}" for k, s in sorted(TIDL_DEPTHWISE_KERNEL_STRIDE))
    for module in model.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if module.groups == 1 or module.groups != module.in_channels:
            continue
        kernel, stride = module.kernel_size, module.stride
        square = kernel[0] == kernel[1] and stride[0] == stride[1]
        if square and (kernel[0], stride[0]) in TIDL_DEPTHWISE_KERNEL_STRIDE:
            continue
        message = (
            f"depthwise Conv2d with kernel {kernel[0]}x{kernel[1]} and stride "
            f"{stride[0]}x{stride[1]}: TIDL runs depthwise convs only as {allowed}; "
            f"change the kernel or stride (or use a regular conv)"
        )
        collector.add(DEPTHWISE_RULE, names[id(module)][0], message, call_site(module))
