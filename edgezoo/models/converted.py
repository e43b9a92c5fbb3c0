"""torchvision models that edgezoo.make_module_only converts, QAT-wraps, exports and verifies
(docs/conversion_coverage.md): in the zoo as their converted torchvision models, with
torchvision's state_dict keys, so its published weights load unchanged."""

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from edgezoo.conversion import make_module_only

__all__ = [
    "AUX_HEAD_PREFIX",
    "CONVERTED",
    "CONVERTED_CLASSIFIERS",
    "CONVERTED_SEGMENTERS",
    "converted_builder",
    "torchvision_model",
]

CONVERTED_CLASSIFIERS: dict[str, str] = {
    "densenet121": "classifier",
    "densenet161": "classifier",
    "densenet169": "classifier",
    "densenet201": "classifier",
    "efficientnet_v2_s": "classifier.1",
    "efficientnet_v2_m": "classifier.1",
    "efficientnet_v2_l": "classifier.1",
    "regnet_x_400mf": "fc",
    "regnet_x_800mf": "fc",
    "regnet_x_1_6gf": "fc",
    "regnet_x_3_2gf": "fc",
    "regnet_x_8gf": "fc",
    "regnet_x_16gf": "fc",
    "regnet_x_32gf": "fc",
    "regnet_y_400mf": "fc",
    "regnet_y_800mf": "fc",
    "regnet_y_1_6gf": "fc",
    "regnet_y_3_2gf": "fc",
    "regnet_y_8gf": "fc",
    "regnet_y_16gf": "fc",
    "regnet_y_32gf": "fc",
    "shufflenet_v2_x0_5": "fc",
    "shufflenet_v2_x1_0": "fc",
    "shufflenet_v2_x1_5": "fc",
    "shufflenet_v2_x2_0": "fc",
    "squeezenet1_0": "classifier.1",
    "squeezenet1_1": "classifier.1",
}
"""torchvision classifier name (also the zoo name) -> its classifier head's attribute."""

CONVERTED_SEGMENTERS: dict[str, str] = {
    "deeplabv3_resnet50": "classifier.4",
    "deeplabv3_resnet101": "classifier.4",
    "fcn_resnet50": "classifier.4",
    "fcn_resnet101": "classifier.4",
}
"""torchvision segmentation model name (also the zoo name) -> its head's last convolution.
Built without the auxiliary head by default (`aux_loss=True` adds it): it is a training aid
whose second output TIDL would compute for nothing."""

AUX_HEAD_PREFIX = "aux_classifier."
"""The keys of torchvision's published segmentation weights that the default zoo model, built
without the auxiliary head, leaves out."""

CONVERTED: dict[str, str] = {**CONVERTED_CLASSIFIERS, **CONVERTED_SEGMENTERS}
"""Every converted zoo model -> its head."""

_EXAMPLE_SIZE = 64  # conversion traces shapes only; these models run at any size >= 64


def converted_builder(torchvision_name: str) -> Callable[..., nn.Module]:
    """A builder(num_classes=..., **kwargs) of torchvision's model, converted to module-only."""

    def build(**kwargs) -> nn.Module:
        model = torchvision_model(torchvision_name, **kwargs)
        example = torch.rand(1, 3, _EXAMPLE_SIZE, _EXAMPLE_SIZE)
        return make_module_only(model, example)

    build.__name__ = torchvision_name
    build.__doc__ = f"torchvision's {torchvision_name}, converted to module-only (same keys)."
    return build


def torchvision_model(name: str, **kwargs) -> nn.Module:
    """torchvision's model as the zoo builds it before conversion: no weights (nor, for the
    segmentation models, backbone weights: pretrained_backbone= loads those through the hub),
    on the default device. RegNet's builder computes its widths with tensors, so on the meta
    device it is built on the CPU and moved."""
    if name in CONVERTED_SEGMENTERS:
        kwargs.setdefault("weights_backbone", None)
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except NotImplementedError:
        device = torch.get_default_device()
        if device.type != "meta":
            raise
        with torch.device("cpu"):
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        return model.to(device)
