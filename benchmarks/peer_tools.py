"""The tools benchmarks/peers.py compares: how each one wraps, trains, evaluates and exports.

Each tool follows its own documentation's recipe for QAT from a float model; what the recipe
leaves open (optimiser, learning rate, images seen) is the shared budget of peers.py.
"""

import copy
import importlib
import itertools
import sys
import types
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import onnxsim
import torch
import torchvision
from accuracy import SCHEDULES, base_config
from torch import nn

from edgezoo import get_model
from edgezoo.engine import fit
from edgezoo.export import export_onnx, verify_onnx
from edgezoo.quantization import QuantizationConfig, wrap_model
from edgezoo.simulation import TIDLSimulator
from edgezoo.tidl.rules import TARGET_PROP

CHOSEN_SCHEDULE = {"mobilenetv2": "ranges_frozen_after_first", "resnet18": "ti"}  # accuracy.md
TORCHVISION = {"mobilenetv2": "mobilenet_v2", "resnet18": "resnet18"}
SIMULATED_IMAGES = 2000


class ToolMissing(Exception):
    """The tool is not installed (or not given); the run is skipped with this reason."""


def float_model(name: str, checkpoints: Path, torchvision_model: bool) -> nn.Module:
    """The converged float checkpoint in edgezoo's model or torchvision's (same keys)."""
    state = torch.load(checkpoints / f"{name}_fashion_mnist_32px.pth", weights_only=True)
    if torchvision_model:
        model = getattr(torchvision.models, TORCHVISION[name])(weights=None, num_classes=10)
    else:
        model = get_model(name, num_classes=10)
    model.load_state_dict(state)
    return model.eval()


def monitor(sets) -> torch.utils.data.Dataset:
    """fit's per-epoch validation only logs here: a small fixed part of the validation split."""
    return torch.utils.data.Subset(sets["val"], range(256))


def example() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class Tool:
    """A tool's recipe: wrap the float model, train it within the shared budget (loop), the
    model it deploys, and its own export."""

    trains = True
    quantized = True
    needs: tuple[str, ...] = ()

    def __init__(self, model_name: str, args) -> None:
        self.model_name, self.args = model_name, args
        self.notes: list[str] = []

    def check_available(self) -> None:
        for module in self.needs:
            try:
                importlib.import_module(module)
            except ImportError as error:
                message = f"{module} not installed ({error}); pip install -e '.[peers]'"
                raise ToolMissing(message) from error

    def prepare(self, float_net: nn.Module, sets) -> nn.Module:
        raise NotImplementedError

    def train(self, model: nn.Module, sets, loop) -> None:
        loop(model)

    def deployed(self, model: nn.Module) -> nn.Module:
        return model.eval()

    def export(self, model: nn.Module, path: Path) -> None:
        torch.onnx.export(model.eval(), (example(),), path, dynamo=False, opset_version=11)


class FloatTool(Tool):
    """Float fine-tuning with the shared budget: the reference for memory and step time (its
    top-1 is the untouched checkpoint's)."""

    quantized = False

    def prepare(self, float_net, sets):
        self.checkpoint = float_net
        return copy.deepcopy(float_net)

    def deployed(self, model):
        return self.checkpoint.eval()


class EdgezooPTQ(Tool):
    """edgezoo's calibration (PTQ with bias calibration), as docs/accuracy.md's PTQ row."""

    trains = False
    mode = "calibrate"
    config = QuantizationConfig()

    def prepare(self, float_net, sets):
        self.teacher = float_net
        return wrap_model(copy.deepcopy(float_net), self.mode, example(), config=self.config)

    def recipe(self, sets):
        base = base_config(self.model_name, sets, self.args)
        return replace(base, mode="calibrate", epochs=1, max_batches=self.args.ptq_batches)

    def train(self, model, sets, loop):
        torch.manual_seed(0)
        fit(model, sets["train"], monitor(sets), self.recipe(sets), progress=False)

    def export(self, model, path):
        report = export_onnx(model, path, example_input=example(), write_configs=False)
        self.notes.append(f"export parity {report.parity_max_abs_diff:.2g}")


class EdgezooQAT(EdgezooPTQ):
    """edgezoo's QAT with the schedule and learning rate chosen on validation (accuracy.md)."""

    trains = True
    mode = "train"
    distill = False

    def recipe(self, sets):
        bn, ranges, _ = SCHEDULES[CHOSEN_SCHEDULE[self.model_name]]
        lr = {"mobilenetv2": 1e-5, "resnet18": 1e-4}[self.model_name]
        base = base_config(self.model_name, sets, self.args)
        config = replace(base, lr=lr, bn_freeze_epoch=bn, range_freeze_epoch=ranges)
        return replace(config, distill=self.distill)

    def train(self, model, sets, loop):
        torch.manual_seed(0)
        teacher = self.teacher if self.distill else None
        config = self.recipe(sets)
        fit(model, sets["train"], monitor(sets), config, progress=False, teacher=teacher)


class EdgezooDistill(EdgezooQAT):
    distill = True


class EdgezooQDQ(EdgezooQAT):
    """edgezoo's QAT for the newer devices: AM68A's scheme, exported as QDQ."""

    config = QuantizationConfig(target="am68a")


class TIv1(Tool):
    """TI's v1 QuantTrainModule (edgeai-tensorlab, imported from --ti-path), its documented
    export: torch.onnx.export(model.module) in eval, opset 11."""

    def check_available(self) -> None:
        path = self.args.ti_path
        if path is None or not (path / "edgeai_torchmodelopt").is_dir():
            raise ToolMissing("TI's torchmodelopt not given: --ti-path .../torchmodelopt")
        sys.path.insert(0, str(path))
        # v3 needs torch.ao.quantization.quantizer, which torch 2.14 lacks; v1 does not use it.
        v3 = "edgeai_torchmodelopt.xmodelopt.quantization.v3"
        sys.modules.setdefault(v3, types.ModuleType(v3))
        self.v1 = importlib.import_module("edgeai_torchmodelopt.xmodelopt.quantization.v1")

    def prepare(self, float_net, sets):
        net = float_model(self.model_name, self.args.checkpoints, torchvision_model=True)
        return self.v1.QuantTrainModule(net, dummy_input=example(), total_epochs=4)

    def train(self, model, sets, loop):
        loop(model)
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            self.notes.append(f"non-finite parameters after training: {bad[:3]}")

    def export(self, model, path):
        torch.onnx.export(model.module, (example(),), path, dynamo=False, opset_version=11)


class TIv1ModuleOnly(TIv1):
    """TI's v1 QuantTrainModule on edgezoo's module-only model of the same architecture and
    weights (each ReLU used once, as TI's docs ask; its residual adds are edgezoo AddBlocks,
    which TI's v1 does not range)."""

    def prepare(self, float_net, sets):
        return self.v1.QuantTrainModule(
            copy.deepcopy(float_net).train(), dummy_input=example(), total_epochs=4
        )


class TIv1PTQ(TIv1):
    """TI's v1 QuantCalibrateModule: forward passes in train mode, no gradients (its docs)."""

    trains = False

    def prepare(self, float_net, sets):
        net = float_model(self.model_name, self.args.checkpoints, torchvision_model=True)
        return self.v1.QuantCalibrateModule(net, dummy_input=example(), total_epochs=1)

    def train(self, model, sets, loop):
        loader = torch.utils.data.DataLoader(sets["train"], self.args.batch_size, shuffle=True)
        model.train()
        with torch.no_grad():
            for index, (images, _) in enumerate(loader):
                if index == self.args.ptq_batches:
                    break
                model(images)


class TorchAO(Tool):
    """torch.ao eager QAT on torchvision's quantizable model, default x86 qconfig (affine,
    per-channel weights: not power-of-two); BN statistics frozen for the last sub-epoch, as
    torchvision's reference recipe freezes them after its observer epochs."""

    def prepare(self, float_net, sets):
        builder = getattr(torchvision.models.quantization, TORCHVISION[self.model_name])
        net = builder(weights=None, quantize=False, num_classes=10)
        net.load_state_dict(float_net.state_dict())
        net.train()
        net.fuse_model(is_qat=True)
        net.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
        return torch.ao.quantization.prepare_qat(net)

    def train(self, model, sets, loop):
        def freeze(net, epoch):
            if epoch == self.args.qat_epochs - 1:
                net.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)

        loop(model, freeze)

    def deployed(self, model):
        self.notes.append("top-1 of the converted int8 model (x86 fbgemm kernels)")
        return torch.ao.quantization.convert(copy.deepcopy(model).eval())

    def export(self, model, path):
        torch.onnx.export(model, (example(),), path, dynamo=False, opset_version=13)


class Brevitas(Tool):
    """Brevitas graph quantization with power-of-two (fixed-point) per-tensor 8-bit scales, BN
    merged first (its preprocess), calibrated on 8 batches, QCDQ export."""

    needs = ("brevitas",)

    def prepare(self, float_net, sets):
        from brevitas.graph import quantize as bq
        from brevitas.graph.calibrate import calibration_mode

        net = float_model(self.model_name, self.args.checkpoints, torchvision_model=True)
        graph = bq.preprocess_for_quantize(net, equalize_iters=0, merge_bn=True)
        maps = [
            power_of_two(m) for m in (bq.COMPUTE_LAYER_MAP, bq.QUANT_ACT_MAP, bq.QUANT_IDENTITY_MAP)
        ]
        model = bq.quantize(
            graph, compute_layer_map=maps[0], quant_act_map=maps[1], quant_identity_map=maps[2]
        )
        loader = torch.utils.data.DataLoader(sets["train"], self.args.batch_size, shuffle=True)
        with torch.no_grad(), calibration_mode(model):
            for index, (images, _) in enumerate(loader):
                if index == 8:
                    break
                model(images)
        return model

    def export(self, model, path):
        from brevitas.export import export_onnx_qcdq

        export_onnx_qcdq(model.eval(), args=example(), export_path=str(path), dynamo=False)


def power_of_two(layer_map: dict) -> dict:
    """A Brevitas layer map with every float-scaled 8-bit quantizer replaced by its fixed-point
    (power-of-two scale) counterpart."""
    import brevitas.quant as q

    swap = {
        q.Int8WeightPerTensorFloat: q.Int8WeightPerTensorFixedPoint,
        q.Int8ActPerTensorFloat: q.Int8ActPerTensorFixedPoint,
        q.Uint8ActPerTensorFloat: q.Uint8ActPerTensorFixedPoint,
        q.Uint8ActPerTensorFloatMaxInit: q.Uint8ActPerTensorFixedPointMaxInit,
    }
    out = {}
    for layer, entry in layer_map.items():
        if entry is None:
            out[layer] = None
            continue
        cls, options = entry
        out[layer] = (
            cls,
            {k: swap.get(v, v) if isinstance(v, type) else v for k, v in options.items()},
        )
    return out


class NNCF(Tool):
    """NNCF: nncf.quantize (symmetric, per-tensor weights and activations, 8 bits) on 8
    batches, then QAT on the returned model; export: nncf.strip then torch.onnx.export (QDQ)."""

    needs = ("nncf",)

    def prepare(self, float_net, sets):
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            QuantizationParameters,
        )

        net = float_model(self.model_name, self.args.checkpoints, torchvision_model=True)
        loader = torch.utils.data.DataLoader(sets["train"], self.args.batch_size, shuffle=True)
        batches = [images for images, _ in itertools.islice(loader, 8)]
        calibration = nncf.Dataset(batches)
        per_tensor = QuantizationParameters(per_channel=False)
        advanced = AdvancedQuantizationParameters(
            weights_quantization_params=per_tensor, activations_quantization_params=per_tensor
        )
        return nncf.quantize(
            net,
            calibration,
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=8 * self.args.batch_size,  # samples
            advanced_parameters=advanced,
        )

    def export(self, model, path):
        import nncf

        stripped = nncf.strip(model.eval(), do_copy=True, example_input=example())
        torch.onnx.export(stripped, (example(),), path, dynamo=False, opset_version=13)


TOOLS = {
    "float": FloatTool,
    "edgezoo_ptq": EdgezooPTQ,
    "edgezoo_qat": EdgezooQAT,
    "edgezoo_qat_distill": EdgezooDistill,
    "edgezoo_qat_qdq": EdgezooQDQ,
    "ti_v1_ptq": TIv1PTQ,
    "ti_v1_qat": TIv1,
    "ti_v1_qat_module_only": TIv1ModuleOnly,
    "torch_ao_qat": TorchAO,
    "brevitas_qat": Brevitas,
    "nncf_qat": NNCF,
}


# What each export is worth on a device.


def export_and_check(tool: Tool, model: nn.Module, sets, folder: Path, run: str) -> dict:
    """Export with the tool's own exporter, then the ONNX's top-1 in onnxruntime, TIDL's
    integer simulation (Clip graphs) and verify_onnx's verdict per device."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run}.onnx"
    try:
        tool.export(model, path)
        # TIDL users simplify before import; edgezoo's own exports are simplified already.
        proto, _ = onnxsim.simplify(onnx.load(str(path)))
        onnx.save(proto, str(path))
    except Exception as error:
        return {"export": {"failed": f"{type(error).__name__}: {str(error)[:300]}"}}
    kind = graph_kind(proto) if tool.quantized else "float"
    nodes = Counter(node.op_type for node in proto.graph.node)
    record: dict[str, Any] = {"export": {"kind": kind, "nodes": dict(nodes)}}
    images, labels = test_arrays(sets)
    onnx_predicted = run_onnx(path, images)
    record["onnx_top1"] = 100.0 * float((onnx_predicted == labels).mean())
    return record | device_checks(proto, kind, images, labels, onnx_predicted)


def device_checks(proto, kind: str, images, labels, onnx_predicted) -> dict[str, Any]:
    """verify_onnx's verdict per device, and TIDL's integer simulation of a Clip graph."""
    record: dict[str, Any] = {
        "verify": {device: verdict(proto, device, kind) for device in ("tda4vm", "am68a")}
    }
    if kind == "clip":
        record["simulation"] = simulated(proto, images, labels, onnx_predicted)
    return record


def recheck(record: dict[str, Any], path: Path, sets) -> dict[str, Any]:
    """A finished run's device checks again, from its saved ONNX (after a verifier change)."""
    proto = onnx.load(str(path))
    images, labels = test_arrays(sets)
    onnx_predicted = run_onnx(path, images)
    checks = device_checks(proto, record["export"]["kind"], images, labels, onnx_predicted)
    return record | checks | {"onnx_top1": 100.0 * float((onnx_predicted == labels).mean())}


def graph_kind(proto: onnx.ModelProto) -> str:
    ops = {node.op_type for node in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    return "clip" if "Clip" in ops else "float"


def test_arrays(sets) -> tuple[np.ndarray, np.ndarray]:
    loader = torch.utils.data.DataLoader(sets["data"].val, batch_size=10000)
    images, labels = next(iter(loader))
    return images.numpy(), labels.numpy()


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    """Predicted classes of the exported graph in onnxruntime (one image at a time where the
    graph's batch is fixed at 1)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else 500
    outputs = [
        session.run(None, {name: images[i : i + step]})[0] for i in range(0, len(images), step)
    ]
    return np.concatenate(outputs).argmax(1)


def verdict(proto: onnx.ModelProto, device: str, kind: str) -> dict[str, Any]:
    """verify_onnx's verdict for a device: the graph as exported, told which device it is for."""
    if kind == "clip" and device != "tda4vm":
        return {"ok": False, "why": "Clip-range QAT graphs are TDA4VM-specific (TI's docs)"}
    marked = copy.deepcopy(proto)
    kept = [p for p in marked.metadata_props if p.key != TARGET_PROP]
    del marked.metadata_props[:]
    marked.metadata_props.extend(kept)
    marked.metadata_props.add(key=TARGET_PROP, value=device)
    try:
        report = verify_onnx(marked, quantized=kind != "float")
    except Exception as error:
        return {"ok": False, "why": f"verify_onnx refused it: {type(error).__name__}: {error}"}
    rules = Counter(violation.rule for violation in report.violations)
    first = str(report.violations[0])[:400] if report.violations else None
    return {"ok": report.ok, "rules": dict(rules), "first": first}


def simulated(proto, images, labels, onnx_predicted) -> dict[str, Any]:
    """TIDL's integer arithmetic (edgezoo's simulator) on the first test images: its top-1 and
    its agreement with onnxruntime's float run of the same graph."""
    count = SIMULATED_IMAGES
    try:
        simulator = TIDLSimulator(proto)
        predicted = []
        for start in range(0, count, 100):
            outputs = simulator(torch.from_numpy(images[start : start + 100]))
            predicted.append(np.asarray(outputs[0]).argmax(1))
    except Exception as error:
        return {"failed": f"{type(error).__name__}: {str(error)[:300]}"}
    predicted = np.concatenate(predicted)
    return {
        "images": count,
        "top1": 100.0 * float((predicted == labels[:count]).mean()),
        "onnx_top1_same_images": 100.0 * float((onnx_predicted[:count] == labels[:count]).mean()),
        "agreement_with_onnx": 100.0 * float((predicted == onnx_predicted[:count]).mean()),
    }
