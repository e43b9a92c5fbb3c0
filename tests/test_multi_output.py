"""Models with several outputs (FPN/YOLO-neck feature maps, dicts of heads) export as named
ONNX outputs, each checked against PyTorch, the integer simulation and TIDL's rules."""

import onnx
import pytest
import torch
from torch import nn

from edgezoo import QuantTrainModule, export_onnx, make_module_only
from edgezoo.errors import UsageError
from edgezoo.export import onnxruntime_session
from edgezoo.simulation import simulate_tidl


class Pyramid(nn.Module):
    """Three feature maps at strides 1, 2 and 4, like a detection neck's heads."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down1 = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.heads = nn.ModuleList(nn.Conv2d(8, 6, 1) for _ in range(3))

    def forward(self, x):
        p1 = self.stem(x)
        p2 = self.down1(p1)
        p3 = self.down2(p2)
        outs = [head(p) for head, p in zip(self.heads, (p1, p2, p3), strict=True)]
        return {"p1": outs[0], "p2": outs[1], "p3": outs[2]} if self.as_dict else tuple(outs)


def images(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def trained(as_dict: bool) -> QuantTrainModule:
    torch.manual_seed(0)
    q = QuantTrainModule(make_module_only(Pyramid(as_dict), images(1)), images(1))
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3)
    for step in range(3):
        outs = q(images(4, step))
        loss = sum(o.square().mean() for o in (outs.values() if as_dict else outs))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return q.eval()


@pytest.mark.parametrize("as_dict", [False, True])
def test_several_outputs_export_as_named_outputs_checked_one_by_one(as_dict, tmp_path):
    q = trained(as_dict)
    path = tmp_path / "pyramid.onnx"
    report = export_onnx(q, path, example_input=images(1), write_configs=False)
    names = ["p1", "p2", "p3"] if as_dict else ["output_0", "output_1", "output_2"]
    assert report.ok and report.integer_max_steps == 0
    assert report.output_names == tuple(names) and "outputs: " + ", ".join(names) in str(report)
    proto = onnx.load(path)
    assert [o.name for o in proto.graph.output] == names
    x = images(2, 7)
    with torch.no_grad():
        expected = q(x)
    expected = list(expected.values()) if as_dict else list(expected)
    simulated = simulate_tidl(proto, x, return_integers=True)
    runtime = onnxruntime_session(path).run(None, {"input": x[:1].numpy()})
    assert len(simulated) == len(runtime) == 3
    for want, device, ort in zip(expected, simulated, runtime, strict=True):
        steps = want.double().numpy() * device.scale
        assert (steps == device.integers).all()  # QAT's integers, every head
        assert ort.shape == tuple(want[:1].shape)


def test_several_outputs_refuse_an_argmax_and_tidl_postprocessing(tmp_path):
    q = trained(False)
    with pytest.raises(UsageError, match="argmax"):
        export_onnx(q, tmp_path / "a.onnx", example_input=images(1), argmax=True)
    with pytest.raises(UsageError, match="write_configs=False"):
        export_onnx(q, tmp_path / "b.onnx", example_input=images(1))
    assert not list(tmp_path.iterdir())


class LevelAlsoActivated(nn.Module):
    """RetinaNet's P6/P7: an output that an activation also reads, before the next level."""

    def __init__(self) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(3, 8, 3, 2, 1)
        self.relu = nn.ReLU()
        self.p7 = nn.Conv2d(8, 8, 3, 2, 1)

    def forward(self, x):
        p6 = self.p6(x)
        return {"p6": p6, "p7": self.p7(self.relu(p6))}


def test_an_output_an_activation_also_reads_is_simulated_unclipped(tmp_path):
    torch.manual_seed(0)
    q = QuantTrainModule(make_module_only(LevelAlsoActivated(), images(1)), images(1))
    with torch.no_grad():
        q(images(4))
    report = export_onnx(
        q.eval(), tmp_path / "m.onnx", example_input=images(1), write_configs=False
    )
    assert report.ok and report.integer_max_steps == 0, str(report)
    with torch.no_grad():
        p6 = q(images(1))["p6"]
    assert (p6 < 0).any()  # the output keeps its negatives; the Clip after it is the ReLU's
    simulated = simulate_tidl(tmp_path / "m.onnx", images(1))[0]
    assert torch.equal(torch.as_tensor(simulated), p6)


class NumberKeys(Pyramid):
    """A dict of heads keyed by numbers (the tracer turned its keys into graph values before)."""

    def forward(self, x):
        return dict(enumerate(super().forward(x)))


def test_a_dict_with_number_keys_exports_each_value_as_output_key(tmp_path):
    torch.manual_seed(0)
    q = QuantTrainModule(make_module_only(NumberKeys(), images(1)), images(1))
    q.train()(images(4))
    report = export_onnx(
        q.eval(), tmp_path / "n.onnx", example_input=images(1), write_configs=False
    )
    assert report.ok and report.output_names == ("output_0", "output_1", "output_2")
    assert report.integer_max_steps == 0
