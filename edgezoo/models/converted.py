"""torchvision classifiers that edgezoo.make_module_only converts, QAT-wraps, exports and
verifies (docs/conversion_coverage.md): in the zoo as their converted torchvision models, with
torchvision's state_dict keys, so its published weights load unchanged."""

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from edgezoo.conversion import make_module_only

__all__ = ["CONVERTED", "converted_builder"]

CONVERTED: dict[str, str] = {
    "densenet121": "classifier",
    "densenet161": "classifier",
    "densenet169": "classifier",
    "densenet201": "classifier",
    "regnet_x_400mf": "fc",
    "regnet_x_800mf": "fc",
    "regnet_x_1_6gf": "fc",
    "regnet_x_3_2gf": "fc",
    "regnet_x_8gf": "fc",
    "regnet_x_16gf": "fc",
    "regnet_x_32gf": "fc",
    "squeezenet1_0": "classifier.1",
    "squeezenet1_1": "classifier.1",
}
"""torchvision name (also the zoo name) -> its classifier head's attribute."""

_EXAMPLE_SIZE = 64  # conversion traces shapes only; these classifiers run at any size >= 64


def converted_builder(torchvision_name: str) -> Callable[..., nn.Module]:
    """A builder(num_classes=1000, **kwargs) of torchvision's model, converted to module-only."""

    def build(num_classes: int = 1000, **kwargs) -> nn.Module:
        model = _torchvision_model(torchvision_name, num_classes=num_classes, **kwargs)
        example = torch.rand(1, 3, _EXAMPLE_SIZE, _EXAMPLE_SIZE)
        return make_module_only(model, example)

    build.__name__ = torchvision_name
    build.__doc__ = f"torchvision's {torchvision_name}, converted to module-only (same keys)."
    return build


def _torchvision_model(name: str, **kwargs) -> nn.Module:
    """torchvision's model without weights, on the default device; RegNet's builder computes
    its widths with tensors, so on the meta device it is built on the CPU and moved."""
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except NotImplementedError:
        device = torch.get_default_device()
        if device.type != "meta":
            raise
        with torch.device("cpu"):
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        return model.to(device)
