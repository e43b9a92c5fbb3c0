"""In-place operations under QAT: a later read of an in-place op's input sees what the original
model computes, or the model is refused naming the line (never a silently different model)."""

import pytest
import torch
from torch import nn

import edgezoo
from edgezoo.errors import ModuleOnlyViolationError
from edgezoo.layers import CatBlock

pytestmark = pytest.mark.usefixtures("one_thread")

WIDE = edgezoo.QuantizationConfig(bitwidth_weights=16, bitwidth_activations=16)


class SliceRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y[:, 4:].relu_()
        return self.head(y)


class InplaceModuleThenCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(16, 4, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.act(y)
        return self.head(torch.cat([y, z], 1))


class InplaceModuleThenCatBlock(InplaceModuleThenCat):
    """Module-only already (no functional op), so only the in-place read needs conversion."""

    def __init__(self) -> None:
        super().__init__()
        self.cat = CatBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.act(y)
        return self.head(self.cat([y, z]))


class OutOfPlace(InplaceModuleThenCat):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.act(self.conv(x))
        return self.head(torch.cat([z, z], 1))


def _qat_output(model: nn.Module) -> torch.Tensor:
    """A 16-bit QAT model's eval output after its ranges saw the input."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    q = edgezoo.QuantTrainModule(model, x, config=WIDE).train()
    for _ in range(4):  # ranges measure a quarter of the pixels per batch, all in four
        q(x)
    with torch.no_grad():
        return q.eval()(x)


def test_an_in_place_activation_on_a_slice_is_refused_naming_the_line():
    with pytest.raises(ModuleOnlyViolationError, match=r"in-place relu at .*test_inplace.py.*view"):
        edgezoo.QuantTrainModule(SliceRelu(), torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("model", [InplaceModuleThenCat, InplaceModuleThenCatBlock])
def test_a_read_of_an_in_place_modules_input_sees_its_output_under_qat(model):
    torch.manual_seed(0)
    aliased = model()
    written_out = OutOfPlace()
    written_out.load_state_dict(aliased.state_dict())
    # What the original computes, written without in-place: both concat halves are relu(y).
    assert torch.equal(_qat_output(aliased), _qat_output(written_out))


def test_check_model_names_an_in_place_module_a_later_read_depends_on():
    torch.manual_seed(0)
    report = edgezoo.check_model(InplaceModuleThenCatBlock(), torch.randn(1, 3, 16, 16))
    assert [(v.rule, v.module) for v in report.violations] == [("inplace-read", "act")]
    model = InplaceModuleThenCatBlock()
    assert model.act.inplace is True  # the check put the flag back
    # torchvision's in-place ReLUs read nothing twice: no violation, nothing converted.
    resnet = edgezoo.get_model("resnet18", num_classes=3)
    assert edgezoo.check_model(resnet, torch.rand(1, 3, 32, 32)).ok
