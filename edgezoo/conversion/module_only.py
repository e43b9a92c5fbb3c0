"""make_module_only: any torch.fx-traceable model as a module-only equivalent for QAT.

Quantization gives every module its own activation range, so each range-changing op must run
in a module of its own, once. torch.fx traces the model into a graph; each functional or
operator call that changes a range becomes its own module (edgezoo/conversion/rewrites.py), and
each parameter-free module called from several places gets one instance per call site. The
result is a torch.fx.GraphModule whose parameters and buffers are the original model's tensors
under the original state_dict keys, computing the same outputs bit for bit.
"""

import contextlib
import copy
import inspect
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

import edgezoo.layers
from edgezoo.conversion.equivalence import check_equivalent
from edgezoo.conversion.inplace import redirect_later_reads, rewire_inplace_modules
from edgezoo.conversion.norm_act import is_frozen_batch_norm, is_norm_act
from edgezoo.conversion.plain_layers import plain_base
from edgezoo.conversion.rewrites import Rewrite, find_rewrite
from edgezoo.conversion.training_branches import (
    mode_dependent_calls,
    source_line,
    trace_in_both_modes,
)
from edgezoo.errors import ConversionError, SharedModuleError, TIDLRuleError
from edgezoo.module_state import kept_modes

__all__ = ["ConversionReport", "make_module_only"]

logger = logging.getLogger(__name__)

_EDGEZOO_LEAVES = (
    edgezoo.layers.AddBlock,
    edgezoo.layers.CatBlock,
    edgezoo.layers.MulBlock,
    edgezoo.layers.ResizeWith,
)


@dataclass
class ConversionReport:
    """What make_module_only changed: counts per kind of rewrite, and the new modules' names."""

    changes: Counter = field(default_factory=Counter)
    modules: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.changes:
            return "already module-only: nothing to convert"
        return "; ".join(f"{kind} x{count}" for kind, count in sorted(self.changes.items()))


def _branches_on_training(module: nn.Module) -> bool:
    """A parameter-free, childless module whose forward reads self.training (stochastic depth,
    custom dropout): traced through, fx would bake in the mode it was traced in."""
    if any(True for _ in module.children()) or any(True for _ in module.parameters()):
        return False
    try:
        return "self.training" in inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping edgezoo's layer modules, mode-dependent parameter-free modules
    and the modules in kept_whole whole, recording each node's source line for error messages
    and which module's forward a tracing error came from."""

    def __init__(self, kept_whole: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.kept_whole = kept_whole
        self.failure: tuple[BaseException, str] | None = None

    def call_module(self, m: nn.Module, forward, args, kwargs) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as error:
            # The innermost module sees the error first; its callers see the same object.
            if self.failure is None or self.failure[0] is not error:
                self.failure = (error, self.path_of_module(m))
            raise

    def failed_in(self, error: BaseException) -> str:
        """The innermost module whose traced forward raised error ("": the model's own)."""
        return self.failure[1] if self.failure and self.failure[0] is error else ""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if qualified_name in self.kept_whole:
            return True
        if isinstance(module, _EDGEZOO_LEAVES) or _branches_on_training(module):
            return True
        if is_norm_act(module) or is_frozen_batch_norm(module) or plain_base(module) is not None:
            return True
        return super().is_leaf_module(module, qualified_name)


_MAX_KEPT_WHOLE = 64  # submodules fx cannot trace, kept whole before giving up


def _trace(model: nn.Module) -> tuple[fx.GraphModule, list[str]]:
    """The traced model, and the submodules kept whole because fx cannot trace them (control
    flow on shapes, as timm VGG's pre-logits): each is traced as one call and run as it is.
    The model's own forward must trace, and so must a module holding its own weights (QAT
    could not quantize it whole)."""
    kept: list[str] = []
    while True:
        tracer = _Tracer(frozenset(kept))
        try:
            graph = tracer.trace(model)
            break
        except Exception as error:  # fx raises many types (TraceError, TypeError, ...)
            inner = tracer.failed_in(error)
            if _keeps_whole(model, inner, kept):
                kept.append(inner)
                continue
            raise _untraceable(model, inner, error) from error
    return fx.GraphModule(model, graph, class_name=type(model).__name__), kept


def _keeps_whole(model: nn.Module, name: str, kept: list[str]) -> bool:
    """Whether the submodule fx failed in can be kept whole: not the model, not already kept,
    no weights of its own (its children's are quantized as usual)."""
    if not name or name in kept or len(kept) >= _MAX_KEPT_WHOLE:
        return False
    return next(model.get_submodule(name).parameters(recurse=False), None) is None


def _untraceable(model: nn.Module, inner: str, error: Exception) -> ConversionError:
    where = f" (in {inner})" if inner else ""
    if inner and next(model.get_submodule(inner).parameters(recurse=False), None) is not None:
        where = (
            f" (in {inner}, a {type(model.get_submodule(inner)).__name__} holding its own weights)"
        )
    return ConversionError(
        f"torch.fx cannot trace {type(model).__name__}{where}: {type(error).__name__}: "
        f"{error}. Rewrite that forward without control flow on tensor shapes or values (a "
        "layer with weights must trace for QAT to quantize it); edgezoo.check_model(model, "
        "example_input) lists each op to move into a module"
    )


class _Runner(fx.Interpreter):
    """Runs the traced graph, remembering the node that failed (for the error message)."""

    failed: fx.Node | None = None

    def run_node(self, node: fx.Node) -> Any:
        try:
            return super().run_node(node)
        except Exception:
            self.failed = self.failed or node
            raise


def _propagate_shapes(module: fx.GraphModule, inputs: tuple[Any, ...]) -> None:
    """Record each value's shape (node.meta['tensor_meta']) from one eval forward (the
    caller restores modes and buffers). A plain run first finds a failing node without
    ShapeProp's printed traceback."""
    runner = _Runner(module)
    module.eval()
    with torch.no_grad():
        try:
            runner.run(*inputs)
        except Exception as error:  # the traced graph failed on the example input
            where = source_line(runner.failed) if runner.failed is not None else "its forward"
            raise ConversionError(
                f"the traced {module.__class__.__name__} fails on the example input at "
                f"{where} ({type(error).__name__}: {str(error).splitlines()[0][:300]}); check "
                "the input size and channels the model expects, or run edgezoo.check_model on it"
            ) from error
        ShapeProp(module).propagate(*inputs)


def _shape(value: Any) -> tuple[int, ...] | None:
    meta = value.meta.get("tensor_meta") if isinstance(value, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _owner(node: fx.Node) -> str:
    """The module whose forward made the call (where the new module goes)."""
    stack = node.meta.get("nn_module_stack") or {}
    if node.op == "call_module":
        return node.target.rpartition(".")[0]
    return next(reversed(stack.values()))[0] if stack else ""


def _free_name(module: fx.GraphModule, owner: str, kind: str) -> str:
    """A new module name under `owner` that no module or attribute there uses. The owner may
    not exist in the GraphModule (fx copies only the modules the graph calls)."""
    existing = dict(module.named_modules())
    parent = existing.get(owner)
    leaf, index = kind, 0
    while f"{owner}.{leaf}".lstrip(".") in existing or hasattr(parent, leaf):
        index += 1
        leaf = f"{kind}_{index}"
    return f"{owner}.{leaf}".lstrip(".")


def _apply(module: fx.GraphModule, node: fx.Node, rewrite: Rewrite, report: ConversionReport):
    name = _free_name(module, _owner(node), rewrite.kind)
    module.add_submodule(name, rewrite.module)
    with module.graph.inserting_after(node):
        replacement = module.graph.call_module(name, rewrite.inputs)
    replacement.meta = dict(node.meta)
    node.replace_all_uses_with(replacement)
    module.graph.erase_node(node)
    if rewrite.mutates is not None:
        redirect_later_reads(replacement, rewrite.mutates, rewrite.kind)
    report.changes[rewrite.kind] += 1
    report.modules.append(name)


def _rewrite_calls(module: fx.GraphModule, tidl_rules: bool, report: ConversionReport) -> None:
    modules = dict(module.named_modules())
    for node in list(module.graph.nodes):
        try:
            rewrite = find_rewrite(node, modules, _shape)
        except TIDLRuleError as error:
            if tidl_rules:
                raise TIDLRuleError(
                    f"node {node.name!r} ({node.format_node()}): {error}; pass "
                    "tidl_rules=False to keep it as it is"
                ) from error
            continue
        if rewrite is not None:
            _apply(module, node, rewrite, report)


def _split_shared_modules(module: fx.GraphModule, report: ConversionReport) -> None:
    """Give each call site of a module called more than once its own copy; refuse one with
    parameters or buffers (real weight sharing: copies would train apart)."""
    calls = Counter(n.target for n in module.graph.nodes if n.op == "call_module")
    seen: Counter = Counter()
    for node in list(module.graph.nodes):
        if node.op != "call_module" or calls[node.target] < 2:
            continue
        seen[node.target] += 1
        if seen[node.target] == 1:
            continue
        shared = module.get_submodule(node.target)
        if any(True for _ in shared.parameters()) or any(True for _ in shared.buffers()):
            raise SharedModuleError(
                f"module {node.target!r} ({type(shared).__name__}) is called "
                f"{calls[node.target]} times and holds parameters or buffers: that is weight "
                "sharing, which per-call-site copies would break in training; give each use "
                "its own module, or keep the sharing and quantize it by hand"
            )
        owner, _, leaf = node.target.rpartition(".")
        name = _free_name(module, owner, leaf)
        module.add_submodule(name, copy.deepcopy(shared))
        node.target = name
        report.changes["one module per call site"] += 1
        report.modules.append(name)


def make_module_only(
    model: nn.Module,
    example_input: Tensor | tuple[Any, ...],
    tidl_rules: bool = True,
    *,
    return_report: bool = False,
) -> fx.GraphModule | tuple[fx.GraphModule, ConversionReport]:
    """A module-only equivalent of any torch.fx-traceable model, ready for QuantTrainModule.

    Each `+`/`+=`/torch.add becomes an AddBlock, each cat a CatBlock, functional and Tensor-
    method activations, pools, flatten and mean over H,W their modules, F.interpolate and
    nn.Upsample a ResizeWith (TIDLRuleError naming the node for a resize TIDL cannot run,
    unless tidl_rules=False), and each parameter-free module called more than once one copy
    per call site. Norm-act layers split into BatchNorm and activation; torchvision's
    FrozenBatchNorm2d and submodules fx cannot trace (without weights of their own) stay whole.
    The result shares the model's parameters and buffers (same tensors, same state_dict keys in
    the same order; deepcopy the model first to keep it apart). Raises ConversionError when fx
    cannot trace the model's own forward or a layer with weights, and SharedModuleError for a
    parameterised module called twice.
    """
    _check_convertible(model)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    report = ConversionReport()
    with _state_preserved(model):
        (module, kept_whole), (flipped, _) = trace_in_both_modes(_trace, model)
        _report_kept_whole(kept_whole, report)
        live = mode_dependent_calls(type(model).__name__, module, flipped)
        _split_norm_acts(module, report)
        _propagate_shapes(module, inputs)
        _keep_dropouts_live(module, live, report)
        _rewrite_calls(module, tidl_rules, report)
        rewire_inplace_modules(module, report.changes)
        _split_shared_modules(module, report)
        module.graph.lint()
        module.recompile()
        _keep_unused_modules(model, module, report)
        _keep_registration_order(model, module)
        _check_state_keys(model, module)
        if check_equivalent(model, module, inputs) is OrderedDict:
            _return_ordered_dict(module)
    _copy_modes(model, module)
    logger.info("make_module_only(%s): %s", type(model).__name__, report)
    return (module, report) if return_report else module


def _report_kept_whole(kept_whole: list[str], report: ConversionReport) -> None:
    if kept_whole:
        report.changes["kept whole (fx cannot trace it)"] += len(kept_whole)
        report.modules.extend(kept_whole)
        logger.warning(
            "torch.fx cannot trace %s: kept whole and run as they are; check_model reports any "
            "functional op left inside them",
            ", ".join(kept_whole),
        )


def _check_convertible(model: Any) -> None:
    """Refuse what torch.fx cannot take, saying what to pass instead."""
    if not isinstance(model, nn.Module):
        raise ConversionError(
            f"make_module_only takes an nn.Module, not {type(model).__name__}: put the "
            "computation in a module's forward"
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise ConversionError(
            "make_module_only cannot convert a TorchScript module: convert the eager model "
            "(before torch.jit.script or torch.jit.trace)"
        )
    if any(type(m).__module__.startswith("edgezoo.quantization") for m in model.modules()):
        raise ConversionError(
            f"{type(model).__name__} is already wrapped for quantization: convert the float "
            "model before wrapping it (wrap_model and QuantTrainModule convert automatically)"
        )


@contextlib.contextmanager
def _state_preserved(model: nn.Module) -> Iterator[None]:
    """Leave the caller's buffers and modes as they were, whatever tracing and the example
    forward did (a traced-through BatchNorm subclass updates its running statistics and
    num_batches_tracked even in eval, having its training branch baked in)."""
    # Meta tensors (a model built on the meta device for its shapes) hold no values to keep.
    buffers = {id(b): (b, b.detach().clone()) for b in model.buffers() if not b.is_meta}
    try:
        with kept_modes(model):
            yield
    finally:
        for buffer, saved in buffers.values():
            if not torch.equal(buffer, saved):
                with torch.no_grad():
                    buffer.copy_(saved)


def _return_ordered_dict(module: fx.GraphModule) -> None:
    """Return an OrderedDict where the original did (fx's generated code returns a dict)."""
    output = next(node for node in module.graph.nodes if node.op == "output")
    if isinstance(output.args[0], dict):
        with module.graph.inserting_before(output):
            ordered = module.graph.call_function(OrderedDict, (output.args[0],))
        output.args = (ordered,)
        module.recompile()


def _copy_modes(model: nn.Module, converted: fx.GraphModule) -> None:
    """Each converted module in the mode of the original module of its name, or of the nearest
    original it was added under (a user's frozen block stays in eval); the containers fx made
    anew keep their originals' state_dict version, so a checkpoint loads back into the original
    class (torchvision's MNASNet reads it)."""
    originals = dict(model.named_modules())
    for name, module in converted.named_modules():
        owner = name
        while owner not in originals:
            owner = owner.rpartition(".")[0]
        module.training = originals[owner].training
        if owner == name and originals[name] is not module:
            module._version = getattr(originals[name], "_version", 1)


def _plain_batch_norm(norm_act: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """An nn.BatchNorm2d holding a norm-act layer's own tensors (same state_dict keys)."""
    bn = nn.BatchNorm2d(
        norm_act.num_features,
        norm_act.eps,
        norm_act.momentum,
        norm_act.affine,
        norm_act.track_running_stats,
        device="meta",
    )
    for name, tensor in [
        *norm_act.named_parameters(recurse=False),
        *norm_act.named_buffers(recurse=False),
    ]:
        setattr(bn, name, tensor)
    bn.train(norm_act.training)
    return bn


def _split_norm_acts(module: fx.GraphModule, report: ConversionReport) -> None:
    """Each norm-act layer as its BatchNorm2d followed by its dropout and activation modules
    (siblings named <layer>_drop / <layer>_act), which the quantizer folds and ranges."""
    for node in list(module.graph.nodes):
        if node.op != "call_module" or not is_norm_act(module.get_submodule(node.target)):
            continue
        norm_act = module.get_submodule(node.target)
        extras = [
            (k, m)
            for k in ("drop", "act")
            if isinstance(m := getattr(norm_act, k, None), nn.Module)
        ]
        if any(True for _, m in extras for _ in [*m.parameters(), *m.buffers()]):
            raise ConversionError(
                f"{node.target} ({type(norm_act).__name__}) has an activation with its own "
                "weights: splitting it would move their state_dict keys; use a parameter-free "
                "activation there, or convert by hand"
            )
        module.add_submodule(node.target, _plain_batch_norm(norm_act))
        last = node
        for kind, extra in extras:
            name = _free_name(
                module, node.target.rpartition(".")[0], f"{node.target.rpartition('.')[2]}_{kind}"
            )
            module.add_submodule(name, extra)
            with module.graph.inserting_after(last):
                call = module.graph.call_module(name, (last,))
            call.meta = dict(node.meta)
            last.replace_all_uses_with(
                call, delete_user_cb=lambda user, call=call: user is not call
            )
            last = call
            report.modules.append(name)
        report.changes["norm-act split"] += 1


def _keep_dropouts_live(module: fx.GraphModule, live: list, report: ConversionReport) -> None:
    """Each functional dropout whose `training` came from self.training becomes its own
    nn.Dropout, which reads its mode at run time as the original did."""
    nodes = {node.name: node for node in module.graph.nodes}
    for call in live:
        node = nodes[call.node_name]
        source = node.args[0] if node.args else node.kwargs["input"]
        _apply(module, node, Rewrite("dropout", call.module, (source,)), report)


def _keep_unused_modules(model: nn.Module, converted: nn.Module, report: ConversionReport) -> None:
    """Modules the forward never calls (a spare head) are kept, unused, under their names: fx
    copies only what the traced forward reaches, which would drop their state_dict entries."""
    for name, original in model.named_modules():
        parent_name, _, leaf = name.rpartition(".")
        if not name or _has_submodule(converted, name):
            continue
        if _has_submodule(converted, parent_name) and any(True for _ in original.state_dict()):
            converted.get_submodule(parent_name).add_module(leaf, original)
            report.changes["kept unused"] += 1


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def _keep_registration_order(model: nn.Module, converted: nn.Module) -> None:
    """The original's order of children and parameters in every container the conversion
    rebuilt: GraphModule registers them in call order, which would reorder state_dict() and
    parameters() of a model that calls its modules out of order (an FPN's inner and layer
    blocks), so an optimizer state saved before conversion would no longer line up. Modules
    the conversion added (add blocks, copies of shared activations) hold no state and go last."""
    for name, original in model.named_modules():
        try:
            copy = converted.get_submodule(name)
        except AttributeError:
            continue
        if copy is original:
            continue
        order = {n: i for i, (n, _) in enumerate(original.named_children())}
        children = dict(copy.named_children())
        ranked = sorted(children, key=lambda n: order.get(n, len(order)))
        if ranked != list(children):
            for child in children:
                delattr(copy, child)
            for child in ranked:
                copy.add_module(child, children[child])
        _keep_parameter_order(original, copy)


def _keep_parameter_order(original: nn.Module, copy: nn.Module) -> None:
    order = [n for n, _ in original.named_parameters(recurse=False)]
    params = dict(copy.named_parameters(recurse=False))
    if list(params) != order and set(params) == set(order):
        for param in order:
            delattr(copy, param)
        for param in order:
            copy.register_parameter(param, params[param])


def _check_state_keys(model: nn.Module, converted: nn.Module) -> None:
    before, after = set(model.state_dict()), set(converted.state_dict())
    if before != after:
        missing = sorted(before - after)[:5]
        raise ConversionError(
            f"converting {type(model).__name__} would drop state_dict entries its traced "
            f"forward never reads ({', '.join(missing)}...): a traced-through module branches "
            "on self.training (a BatchNorm subclass such as timm's BatchNormAct2d) or holds "
            "unused state; use torch.nn's own layers there, or convert by hand"
        )
