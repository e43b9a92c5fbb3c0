"""export_onnx on every shipped model, float and QAT: verified graphs, parity, grid weights."""

import functools

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from onnx import numpy_helper
from torch import nn

from edgezoo.conversion import make_module_only
from edgezoo.errors import ExportVerificationError, TIDLRuleError
from edgezoo.export import export_onnx, onnxruntime_session, tidl_requantize, verify_onnx
from edgezoo.models import BUILDERS, CONVERTED
from edgezoo.quantization import QuantTrainModule, activation_ranges, clip_only, convert_to_deploy
from edgezoo.registry import model_info
from edgezoo.tidl.rules import TIDL_SUPPORTED_OPS

SIZE = (64, 64)
LARGE_SIZE = (32, 32)
FULL_MATRIX = (
    "resnet18",
    "resnet50",
    "mobilenetv2",
    "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_resnet50",
)
# Over 40M parameters, only the largest: exported once as QAT (opset 11, small input, initial
# ranges) and once as float; the other 40M+ models' paths are resnet50's, only bigger.
LARGEST = "wide_resnet101_2"
LARGE = (LARGEST,)
OTHERS = tuple(
    sorted(
        name
        for name in set(BUILDERS) - set(FULL_MATRIX) - set(CONVERTED)
        if model_info(name)["num_params"] < 40_000_000
    )
)
LEFTOVERS = {"Identity", "Shape", "Gather", "Cast", "Unsqueeze", "ConstantOfShape", "Constant"}
CASES = [
    *(
        (name, qat, opset)
        for name in FULL_MATRIX + OTHERS
        for qat in (False, True)
        for opset in (11, 17)
    ),
    *((name, True, 11) for name in LARGE),
    (LARGEST, False, 11),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def segmentation(name: str) -> bool:
    return name.startswith("deeplab")


def classification(name: str) -> bool:
    return not segmentation(name) and not name.startswith(("ssdlite", "yolox"))


def input_size(name: str) -> tuple[int, int]:
    return LARGE_SIZE if name in LARGE else SIZE


@functools.cache
def build(name: str, qat: bool) -> nn.Module:
    """A small-head model; the QAT one has ranges learned from training batches (not LARGE)."""
    torch.manual_seed(0)
    model = BUILDERS[name](num_classes=5 if segmentation(name) else 10)
    if not qat:
        return model
    size = input_size(name)
    q = QuantTrainModule(model, torch.rand(1, 3, *size))
    q.train()
    with torch.no_grad():
        for _ in range(0 if name in LARGE else 2):
            q(torch.randn(2, 3, *size))
    return q


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """export(name, qat, opset) -> (report, model), each export done once per module."""
    folder = tmp_path_factory.mktemp("exports")

    @functools.cache
    def export(name: str, qat: bool, opset: int):
        model = build(name, qat)
        path = folder / f"{name}_{'qat' if qat else 'float'}_{opset}.onnx"
        # The large models skip training their ranges (budget); they are exported all the same.
        report = export_onnx(
            model,
            path,
            input_size=input_size(name),
            opset=opset,
            model_name=name,
            allow_uncalibrated=qat and name in LARGE,
        )
        return report, model

    return export


@pytest.mark.parametrize(("name", "qat", "opset"), CASES)
def test_model_exports_a_clean_tidl_graph(exported, name, qat, opset):
    report, model = exported(name, qat, opset)
    assert report.ok, str(report)
    assert report.parity_max_rel_diff <= 1e-4
    ops = set(report.node_counts)
    assert ops <= TIDL_SUPPORTED_OPS
    assert not ops & (LEFTOVERS | {"BatchNormalization", "ReduceMean"})
    assert ("Resize" in ops) == (segmentation(name) or name.startswith("yolox"))
    assert ("GlobalAveragePool" in ops) == classification(name)
    # One Clip per QAT range (PACT2); a float graph keeps only its ReLU6 clamps.
    expected_clips = (
        len(activation_ranges(model))
        if qat
        else sum(isinstance(m, nn.ReLU6) for m in model.modules())
    )
    assert report.clip_count == expected_clips
    if qat:
        assert expected_clips > 0
        assert model.training  # the caller's mode is restored
    if name not in LARGE:  # re-reading half a gigabyte proves nothing new
        proto = onnx.load(report.path)
        assert proto.opset_import[0].version == opset
        assert {node.op_type for node in proto.graph.node} == ops
        assert verify_onnx(report.path, quantized=qat).ok
    folder_files = {p.name for p in report.path.parent.glob(f"{report.path.stem}*")}
    is_detector = name.startswith(("ssdlite", "yolox"))
    detector = {f"{report.path.stem}_meta_arch.prototxt"} if is_detector else set()
    assert folder_files == {
        report.path.name,
        f"{report.path.stem}_tidl_compile_options.json",
        f"{report.path.stem}_tidl_import.txt",
        f"{report.path.stem}_param.json",
        *detector,
    }  # one self-contained ONNX file (no external data) and the TIDL configs


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "deeplabv3plus_mobilenetv2"])
def test_tidl_requantization_gives_the_weights_qat_used(exported, name):
    report, q = exported(name, True, 11)
    used = [
        m.weight.numpy()
        for m in convert_to_deploy(q).modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    proto = onnx.load(report.path)
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    written = [weights[n.input[1]] for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(written) == len(used)
    # Match each written weight to one the QAT forward used (graph and module orders differ).
    for weight in written:
        requantized = tidl_requantize(weight)
        match = next((i for i, u in enumerate(used) if np.array_equal(requantized, u)), None)
        assert match is not None, "TIDL's re-quantization gives weights QAT never used"
        used.pop(match)


def test_half_range_weight_peak_is_kept_exact_through_export(tmp_path):
    """A folded weight peak of +64 steps (max|w| just above half the clip) survives TIDL."""
    torch.manual_seed(0)
    model = BUILDERS["resnet18"](num_classes=10)
    with torch.no_grad():
        weight = torch.empty_like(model.conv1.weight).uniform_(-0.45, 0.45)
        weight[3, 1, 1, 1] = 0.503  # x 128 (QAT scale for ceil2 = 1) -> 64.4 -> k = +64
        model.conv1.weight.copy_(weight)
    q = QuantTrainModule(model, torch.rand(1, 3, *SIZE))
    report = export_onnx(
        q, tmp_path / "peak.onnx", input_size=SIZE, write_configs=False, allow_uncalibrated=True
    )
    assert report.ok, str(report)
    assert report.aligned_weights == ("/conv1/conv1.0/Conv",) or len(report.aligned_weights) == 1
    qat_conv1 = q.module.conv1.quantized_weight_bias()[0].detach().numpy()
    assert qat_conv1.max() == np.float32(0.5)  # k = +64 at scale 128: half the clip
    deploy_conv1 = next(
        m for m in convert_to_deploy(q).modules() if isinstance(m, nn.Conv2d)
    ).weight.numpy()
    assert deploy_conv1.max() == np.nextafter(np.float32(0.5), np.float32(1))  # nudged
    proto = onnx.load(report.path)
    first_conv = next(node for node in proto.graph.node if node.op_type == "Conv")
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    written = weights[first_conv.input[1]]
    np.testing.assert_array_equal(written, deploy_conv1)
    np.testing.assert_array_equal(tidl_requantize(written), qat_conv1)


def test_parity_is_against_the_clip_only_simulation(exported):
    report, q = exported("mobilenetv2", True, 11)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    (ort_out,) = onnxruntime_session(report.path).run(None, {"input": x.numpy()})
    q.eval()
    try:
        with torch.no_grad(), clip_only(q):
            clip_only_out = q(x).numpy()
        with torch.no_grad():
            rounded_out = q(x).numpy()
    finally:
        q.train()
    scale = np.abs(clip_only_out).max()
    assert np.abs(ort_out - clip_only_out).max() <= 1e-4 * scale
    # The quantized simulation also rounds activations: plain float differs slightly from it.
    assert np.abs(ort_out - rounded_out).max() > 1e-4 * scale


def test_argmax_is_appended_for_segmentation(tmp_path):
    q = build("deeplabv3plus_mobilenetv2", True)
    report = export_onnx(
        q,
        tmp_path / "seg.onnx",
        input_size=SIZE,
        argmax=True,
        model_name="deeplabv3plus_mobilenetv2",
    )
    assert report.ok, str(report)
    proto = onnx.load(report.path)
    last = proto.graph.node[-1]
    assert last.op_type == "ArgMax"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in last.attribute}
    assert attrs == {"axis": 1, "keepdims": 1, "select_last_index": 0} or attrs == {
        "axis": 1,
        "keepdims": 1,
    }
    output = proto.graph.output[0]
    assert output.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [1, 1, *SIZE]
    x = torch.randn(1, 3, *SIZE)
    (labels,) = onnxruntime_session(report.path).run(None, {"input": x.numpy()})
    q.eval()
    try:
        with torch.no_grad(), clip_only(q):
            expected = q(x).argmax(dim=1, keepdim=True).numpy()
    finally:
        q.train()
    assert (labels == expected).mean() > 0.999
    assert "postProcType      = 3" in report.config_files["import_config"].read_text()


def test_without_onnxsim_the_cleanup_gives_the_same_graph(exported, tmp_path):
    simplified, q = exported("deeplabv3plus_mobilenetv2", True, 11)
    plain = export_onnx(
        q, tmp_path / "plain.onnx", input_size=SIZE, simplify=False, write_configs=False
    )
    assert plain.ok, str(plain)
    assert plain.node_counts == simplified.node_counts


class TwinBranches(nn.Module):
    """Two branches that compute alike until trained apart (default-initialised BatchNorms
    reading the same tensor): onnxsim's common-subexpression pass would merge them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_a, self.bn_b = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.relu_a, self.relu_b = nn.ReLU(), nn.ReLU()
        self.conv_a, self.conv_b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        f = self.conv(x)
        return self.conv_a(self.relu_a(self.bn_a(f))) + self.conv_b(self.relu_b(self.bn_b(f)))


def test_branches_that_compute_alike_keep_their_own_ranges(tmp_path):
    x = torch.randn(1, 3, 16, 16)
    q = QuantTrainModule(make_module_only(TwinBranches(), x), x)
    with torch.no_grad():
        q(torch.randn(4, 3, 16, 16))  # both branches see the same data: equal ranges
    report = export_onnx(q.eval(), tmp_path / "twins.onnx", example_input=x, write_configs=False)
    assert report.ok and report.node_counts["Clip"] == 6, str(report)


def test_bare_quantized_module_without_input_range(tmp_path):
    model = BUILDERS["resnet18"](num_classes=10)
    q = QuantTrainModule(model, torch.rand(1, 3, *SIZE), quantize_input=False)
    with torch.no_grad():
        q(torch.randn(2, 3, *SIZE))  # ranges that saw data
    report = export_onnx(q.module, tmp_path / "m.onnx", input_size=SIZE, write_configs=False)
    assert report.ok and report.quantized, str(report)
    assert verify_onnx(report.path).rules() == {"input-clip"}
    assert verify_onnx(report.path, input_clipped=False).ok


@pytest.mark.parametrize("opset", [18, 20, 10])
def test_unsupported_opsets_are_refused_with_the_working_range(tmp_path, opset):
    with pytest.raises(TIDLRuleError, match="use opset 11 to 17"):
        export_onnx(build("resnet18", False), tmp_path / "x.onnx", input_size=SIZE, opset=opset)
    assert not (tmp_path / "x.onnx").exists()


class AlignCornersNet(nn.Module):
    """A float net whose upsampling TIDL cannot import (align_corners=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="bilinear", align_corners=True)


class MeanPoolNet(nn.Module):
    """A float classifier pooling with mean(), which exports as ReduceMean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "rule", "needle"),
    [(AlignCornersNet(), "resize", "align_corners"), (MeanPoolNet(), "reduce-mean", "ReduceMean")],
)
def test_strict_refuses_and_non_strict_writes_a_failing_graph(tmp_path, model, rule, needle):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportVerificationError, match=needle) as caught:
        export_onnx(model, path, input_size=(16, 16))
    assert rule in caught.value.report.rules()
    assert not path.exists()
    report = export_onnx(model, path, input_size=(16, 16), strict=False)
    assert path.exists() and not report.ok
    assert rule in report.verification.rules()
    assert report.parity_ok


def test_float_mode_restored_and_torchvision_float_models_export(tmp_path):
    model = torchvision.models.mobilenet_v2(num_classes=10)
    model.train()
    report = export_onnx(model, tmp_path / "tv.onnx", input_size=(32, 32), task="classification")
    assert report.ok and not report.quantized
    assert all(m.training for m in model.modules())
    assert "PTQ" in report.config_files["compile_options"].read_text()


def test_export_needs_an_input_shape(tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(build("resnet18", False), tmp_path / "x.onnx")
