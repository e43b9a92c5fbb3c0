"""SSDLite "lite": torchvision's SSDLite design on a MobileNetV2 feature trunk, as TI's
ssdlite_mobilenetv2 models are built for TIDL (ReLU6, no squeeze-excitation, no decoding in the
graph).

The model returns the heads' raw outputs ({"box_0", ..., "cls_0", ...}); what they mean (prior
boxes, classes, decoding) is `model.meta_arch` (edgezoo.detection.SSDMetaArch), which the loss,
the host decoding, the exporter's prototxt and the verifier read. The backbone sits under
`backbone.` with torchvision's classifier keys, so ImageNet weights load into it unchanged.
"""

from collections.abc import Sequence

from torch import Tensor, nn

from edgezoo.detection.ssd import SSDMetaArch
from edgezoo.detection.ssd_boxes import SSDBoxes
from edgezoo.layers import ConvNormAct
from edgezoo.models.features import FeatureMaps, feature_maps
from edgezoo.models.mobilenetv2 import MobileNetV2

__all__ = ["DEFAULT_DETECTION_INPUT_SIZE", "SSDLite", "ssdlite_mobilenetv2_lite"]

DEFAULT_DETECTION_INPUT_SIZE = (320, 320)
"""(H, W) of torchvision's SSDLite320; any square size that is a multiple of 32 works."""

EXTRA_CHANNELS = (512, 256, 256, 128)
"""torchvision SSDLite's four extra stride-2 levels after the backbone's two."""


def _relu6(inplace: bool = True) -> nn.Module:
    return nn.ReLU6(inplace=inplace)


def _extra_level(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 squeeze, depthwise 3x3 stride 2, 1x1 expand (SSDLite's extra block)."""
    middle = out_channels // 2
    return nn.Sequential(
        ConvNormAct(in_channels, middle, 1, activation_layer=_relu6),
        ConvNormAct(middle, middle, 3, stride=2, groups=middle, activation_layer=_relu6),
        ConvNormAct(middle, out_channels, 1, activation_layer=_relu6),
    )


def _predictor(in_channels: int, out_channels: int) -> nn.Sequential:
    """Depthwise 3x3 + BN + ReLU6, then a 1x1 conv with bias (SSDLite's prediction block)."""
    return nn.Sequential(
        ConvNormAct(in_channels, in_channels, 3, groups=in_channels, activation_layer=_relu6),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class SSDLite(nn.Module):
    """SSDLite on a feature trunk's last two maps plus len(extra_channels) extra levels.

    Returns {"box_k": (N, priors * 4, H_k, W_k), ..., "cls_k": (N, priors * (classes + 1),
    H_k, W_k), ...}: raw head outputs, background the last class. `meta_arch` describes them.
    """

    def __init__(
        self,
        backbone: FeatureMaps,
        num_classes: int = 80,
        extra_channels: Sequence[int] = EXTRA_CHANNELS,
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        min_ratio: float = 0.15,
        max_ratio: float = 0.9,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        channels = [*backbone.channels[-2:], *extra_channels]
        self.extras = nn.ModuleList(
            _extra_level(c_in, c_out)
            for c_in, c_out in zip(channels[1:], extra_channels, strict=False)
        )
        levels = len(channels)
        ratios = aspect_ratios or [(2.0, 3.0)] * levels
        boxes = SSDBoxes(
            tuple(tuple(float(r) for r in level) for level in ratios), min_ratio, max_ratio
        )
        self.meta_arch = SSDMetaArch(
            num_classes,
            boxes,
            tuple(f"box_{k}" for k in range(levels)),
            tuple(f"cls_{k}" for k in range(levels)),
        )
        priors = boxes.priors_per_level
        self.box_heads = nn.ModuleList(
            _predictor(c, p * 4) for c, p in zip(channels, priors, strict=True)
        )
        self.class_heads = nn.ModuleList(
            _predictor(c, p * (num_classes + 1)) for c, p in zip(channels, priors, strict=True)
        )
        self._init_new_layers()

    def _init_new_layers(self) -> None:
        """Xavier for the new convs (as torchvision's SSDLite heads), identity BN."""
        for part in (self.extras, self.box_heads, self.class_heads):
            for m in part.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = list(self.backbone(x)[-2:])
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        meta = self.meta_arch
        outputs = {
            name: head(m)
            for name, head, m in zip(meta.box_outputs, self.box_heads, maps, strict=True)
        }
        outputs.update(
            (name, head(m))
            for name, head, m in zip(meta.class_outputs, self.class_heads, maps, strict=True)
        )
        return outputs


def ssdlite_mobilenetv2_lite(num_classes: int = 80, **kwargs: object) -> SSDLite:
    """SSDLite on MobileNetV2's stride-16 (features.13, 96 ch) and stride-32 (features.17,
    320 ch) maps, four extra levels, six priors per location (aspect ratios 2 and 3).

    kwargs go to SSDLite (extra_channels, aspect_ratios, min_ratio, max_ratio).
    """
    backbone = feature_maps(MobileNetV2(), (-2, -1))
    return SSDLite(backbone, num_classes=num_classes, **kwargs)
