"""DeepLabV3+ "lite": a TIDL-friendly DeepLabV3+ (TI's edgeailite head) on torchvision backbones.

The head differs from the paper's DeepLabV3+ in what TIDL can import: the ASPP is depthwise-
separable and has no image-pooling branch (its 1x1 -> HxW resize needs a `sizes` input, which
TIDL rejects), and every resize is a x4 bilinear ResizeWith (power-of-two scale, half-pixel).
The backbone sits under `backbone.` with torchvision's classifier keys, so an ImageNet checkpoint
loads into `model.backbone` unchanged; it returns its two feature taps as a tuple (no hooks).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from edgezoo.errors import InputShapeError
from edgezoo.layers import CatBlock, ConvNormAct, ResizeWith
from edgezoo.models.features import FeatureMaps, feature_maps
from edgezoo.models.mobilenetv2 import DEFAULT_SETTING, MobileNetV2
from edgezoo.models.resnet import ResNet, resnet50

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "DeepLabV3Plus",
    "SeparableASPP",
    "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_resnet50",
    "mobilenetv2_backbone",
    "resnet_backbone",
]

DEFAULT_INPUT_SIZE = (384, 768)
"""(H, W) of TI's Cityscapes 768x384 setting; any multiple of the output stride (16) works."""


def mobilenetv2_backbone(**kwargs: object) -> FeatureMaps:
    """MobileNetV2's feature maps at strides 4 (features.3, 24 ch) and 16 (features.17, 320 ch).

    The last stride-2 stage (160 ch, features.14) runs at stride 1 without dilation, as in TI's
    edgeailite model; strides are not parameters, so torchvision weights still fit. The 1x1
    320->1280 conv (features.18) and the classifier only serve classification and are left out
    (`unused_checkpoint_prefixes`). kwargs go to MobileNetV2 (e.g. width_mult).
    """
    setting = [list(row) for row in DEFAULT_SETTING]
    setting[5][3] = 1  # the 160-ch stage: stride 2 -> 1 gives output stride 16
    return feature_maps(MobileNetV2(inverted_residual_setting=setting, **kwargs), (1, -1))


def resnet_backbone(resnet: ResNet) -> FeatureMaps:
    """A ResNet's feature maps after layer1 (stride 4) and layer4 (no pool, no fc)."""
    return feature_maps(resnet, (1, -1))


class SeparableASPP(nn.Module):
    """ASPP without image pooling: a 1x1 branch and depthwise-separable dilated 3x3 branches."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        dilations: Sequence[int] = (6, 12, 18),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        separable = [
            nn.Sequential(
                ConvNormAct(in_channels, in_channels, 3, groups=in_channels, dilation=d),
                ConvNormAct(in_channels, out_channels, 1),
            )
            for d in dilations
        ]
        self.branches = nn.ModuleList([ConvNormAct(in_channels, out_channels, 1), *separable])
        self.cat = CatBlock()
        self.dropout = nn.Dropout2d(dropout)
        self.project = ConvNormAct(out_channels * len(self.branches), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        merged = self.cat([branch(x) for branch in self.branches])
        return self.project(self.dropout(merged))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ lite: backbone, separable ASPP, stride-4 shortcut, x4 / x4 bilinear decoder.

    `backbone(x)` returns the (low_level, high_level) feature maps and describes them in its
    `feature_info` (edgezoo.models.features: channels and reduction of each), as
    `feature_maps(classifier, out_indices)` does. Both resize factors must be powers of two.
    Returns logits (N, num_classes, H, W) at the input resolution.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 21,
        aspp_channels: int = 256,
        aspp_dilations: Sequence[int] = (6, 12, 18),
        shortcut_channels: int = 48,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        low_level, high_level = backbone.feature_info
        self.output_stride: int = high_level.reduction
        low_level_stride = low_level.reduction
        self.backbone = backbone
        self.aspp = SeparableASPP(high_level.channels, aspp_channels, aspp_dilations, dropout)
        self.shortcut = ConvNormAct(low_level.channels, shortcut_channels, 1)
        self.upsample_context = ResizeWith(self.output_stride // low_level_stride, "bilinear")
        self.cat = CatBlock()
        merged = aspp_channels + shortcut_channels
        self.predictor = nn.Sequential(
            ConvNormAct(merged, merged, 3, groups=merged, activation_layer=None),
            nn.Conv2d(merged, num_classes, 1, bias=False),
        )
        self.upsample_logits = ResizeWith(low_level_stride, "bilinear")
        self._init_head()

    def _init_head(self) -> None:
        """He init for the head's convs and identity BN; the backbone keeps its own init."""
        for name, m in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise InputShapeError unless H and W are multiples of the output stride."""
        stride = self.output_stride
        if height % stride or width % stride:
            down = [max(stride, v // stride * stride) for v in (height, width)]
            up = [-(-v // stride) * stride for v in (height, width)]
            raise InputShapeError(
                f"{type(self).__name__} needs input height and width that are multiples of its "
                f"output stride {stride} (so every resize is an exact power-of-two scale), got "
                f"{height}x{width}; resize, crop or pad to e.g. {down[0]}x{down[1]} or "
                f"{up[0]}x{up[1]}"
            )

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_tracing():  # traced sizes are tensors; a check would only warn
            self.check_input_size(x.shape[-2], x.shape[-1])
        low_level, high_level = self.backbone(x)
        context = self.upsample_context(self.aspp(high_level))
        merged = self.cat([context, self.shortcut(low_level)])
        return self.upsample_logits(self.predictor(merged))


def deeplabv3plus_mobilenetv2(num_classes: int = 21, **kwargs: object) -> DeepLabV3Plus:
    """DeepLabV3+ lite on MobileNetV2 (TI's deeplabv3plus_mobilenetv2_tv_edgeailite design).

    Output stride 16 by running the 160-ch stage at stride 1 (no dilation); ASPP on the 320-ch
    feature; shortcut from features.3 (24 ch, stride 4) -> 48; both resizes x4 bilinear.
    kwargs go to DeepLabV3Plus (aspp_channels, aspp_dilations, shortcut_channels, dropout).
    """
    return DeepLabV3Plus(mobilenetv2_backbone(), num_classes=num_classes, **kwargs)


def deeplabv3plus_resnet50(num_classes: int = 21, **kwargs: object) -> DeepLabV3Plus:
    """DeepLabV3+ lite on ResNet-50 at output stride 16.

    layer4 trades its stride for dilation 2 (replace_stride_with_dilation=[False, False, True]);
    ASPP on layer4's 2048-ch feature; shortcut from layer1 (256 ch, stride 4) -> 48; both resizes
    x4 bilinear, so every resize is a power-of-two scale and there is no image-pooling branch.
    kwargs go to DeepLabV3Plus (aspp_channels, aspp_dilations, shortcut_channels, dropout).
    """
    trunk = resnet50(replace_stride_with_dilation=[False, False, True])
    return DeepLabV3Plus(resnet_backbone(trunk), num_classes=num_classes, **kwargs)
