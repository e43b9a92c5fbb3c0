"""YOLOX "lite": YOLOX-nano as TI rebuilds it for TIDL (edgeai-yolox / edgeai-mmdetection
lite models): ReLU for SiLU, a 5x5 stride-2 conv for the Focus stem, the SPP's 5/9/13 max
pools as 2/4/6 stacked 3x3 pools, depthwise-separable convs (nano), a PAN neck and a decoupled
head whose box (4), objectness (1) and class (C) outputs are concatenated per level, as
TIDL's YOLO meta-architecture (meta_arch_type 6) reads them.

The model returns {"out_8", "out_16", "out_32"}: raw (N, 5 + C, H/s, W/s) maps; what they mean
(anchor-free YOLOX decoding, SimOTA-assigned loss) is `model.meta_arch`
(edgezoo.detection.YOLOXMetaArch). torchvision publishes no CSPDarknet weights, so the model
starts from scratch (as YOLOX trains on COCO).
"""

import math
from collections.abc import Sequence

from torch import Tensor, nn

from edgezoo.detection.yolox import YOLOXMetaArch
from edgezoo.layers import AddBlock, CatBlock, ConvNormAct, ResizeWith

__all__ = ["YOLOX", "yolox_nano_lite"]

PRIOR_PROBABILITY = 0.01
"""The initial objectness and class probability (YOLOX's bias initialisation)."""


def _separable(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each with BN and ReLU (YOLOX's DWConv)."""
    return nn.Sequential(
        ConvNormAct(c_in, c_in, 3, stride=stride, groups=c_in),
        ConvNormAct(c_in, c_out, 1),
    )


class Bottleneck(nn.Module):
    """1x1 then depthwise-separable 3x3, with a residual add when shapes allow."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 1)
        self.conv2 = _separable(channels, channels)
        self.add = AddBlock() if shortcut else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y if self.add is None else self.add([y, x])


class CSPLayer(nn.Module):
    """Cross-stage partial block: two 1x1 branches, bottlenecks on one, concat, 1x1."""

    def __init__(self, c_in: int, c_out: int, depth: int, shortcut: bool = True) -> None:
        super().__init__()
        hidden = c_out // 2
        self.conv1 = ConvNormAct(c_in, hidden, 1)
        self.conv2 = ConvNormAct(c_in, hidden, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(depth)))
        self.cat = CatBlock()
        self.conv3 = ConvNormAct(2 * hidden, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.cat([self.m(self.conv1(x)), self.conv2(x)]))


class SPPLite(nn.Module):
    """SPP with its 5x5 / 9x9 / 13x13 max pools as 2 / 4 / 6 stacked 3x3 pools (TI's lite)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in // 2
        self.conv1 = ConvNormAct(c_in, hidden, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(3, stride=1, padding=1) for _ in range(6))
        self.cat = CatBlock()
        self.conv2 = ConvNormAct(4 * hidden, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        maps, y = [x], x
        for i, pool in enumerate(self.pools):
            y = pool(y)
            if i % 2:
                maps.append(y)
        return self.conv2(self.cat(maps))


class CSPDarknetLite(nn.Module):
    """YOLOX's CSPDarknet at `width` / `depth`, returning the stride 8, 16 and 32 maps."""

    def __init__(self, width: float, depth: float) -> None:
        super().__init__()
        c = int(64 * width)
        n = max(round(3 * depth), 1)
        self.stem = ConvNormAct(3, c, 5, stride=2)
        self.dark2 = nn.Sequential(_separable(c, 2 * c, 2), CSPLayer(2 * c, 2 * c, n))
        self.dark3 = nn.Sequential(_separable(2 * c, 4 * c, 2), CSPLayer(4 * c, 4 * c, 3 * n))
        self.dark4 = nn.Sequential(_separable(4 * c, 8 * c, 2), CSPLayer(8 * c, 8 * c, 3 * n))
        self.dark5 = nn.Sequential(
            _separable(8 * c, 16 * c, 2),
            SPPLite(16 * c, 16 * c),
            CSPLayer(16 * c, 16 * c, n, shortcut=False),
        )
        self.channels = (4 * c, 8 * c, 16 * c)

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.dark3(self.dark2(self.stem(x)))
        c4 = self.dark4(c3)
        return [c3, c4, self.dark5(c4)]


class PANLite(nn.Module):
    """YOLOX's PAFPN: top-down (x2 nearest resizes), then bottom-up (stride-2 convs)."""

    def __init__(self, channels: Sequence[int], depth: int) -> None:
        super().__init__()
        c3, c4, c5 = channels
        self.lateral_conv0 = ConvNormAct(c5, c4, 1)
        self.up0, self.cat0 = ResizeWith(2, "nearest"), CatBlock()
        self.c3_p4 = CSPLayer(2 * c4, c4, depth, shortcut=False)
        self.reduce_conv1 = ConvNormAct(c4, c3, 1)
        self.up1, self.cat1 = ResizeWith(2, "nearest"), CatBlock()
        self.c3_p3 = CSPLayer(2 * c3, c3, depth, shortcut=False)
        self.bu_conv2, self.cat2 = _separable(c3, c3, 2), CatBlock()
        self.c3_n3 = CSPLayer(2 * c3, c4, depth, shortcut=False)
        self.bu_conv1, self.cat3 = _separable(c4, c4, 2), CatBlock()
        self.c3_n4 = CSPLayer(2 * c4, c5, depth, shortcut=False)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        x3, x4, x5 = maps
        top = self.lateral_conv0(x5)
        p4 = self.c3_p4(self.cat0([self.up0(top), x4]))
        middle = self.reduce_conv1(p4)
        p3 = self.c3_p3(self.cat1([self.up1(middle), x3]))
        n3 = self.c3_n3(self.cat2([self.bu_conv2(p3), middle]))
        n4 = self.c3_n4(self.cat3([self.bu_conv1(n3), top]))
        return [p3, n3, n4]


class DecoupledHead(nn.Module):
    """One level's YOLOX head: a 1x1 stem, two separable convs per branch, then box (4),
    objectness (1) and class (C) predictions concatenated (TIDL reads one tensor per level)."""

    def __init__(self, c_in: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.stem = ConvNormAct(c_in, hidden, 1)
        self.cls_convs = nn.Sequential(_separable(hidden, hidden), _separable(hidden, hidden))
        self.reg_convs = nn.Sequential(_separable(hidden, hidden), _separable(hidden, hidden))
        self.cls_pred = nn.Conv2d(hidden, num_classes, 1)
        self.reg_pred = nn.Conv2d(hidden, 4, 1)
        self.obj_pred = nn.Conv2d(hidden, 1, 1)
        self.cat = CatBlock()
        prior = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
        for conv in (self.cls_pred, self.obj_pred):
            nn.init.constant_(conv.bias, prior)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        regression = self.reg_convs(x)
        classes = self.cls_pred(self.cls_convs(x))
        return self.cat([self.reg_pred(regression), self.obj_pred(regression), classes])


class YOLOX(nn.Module):
    """YOLOX lite: CSPDarknet, PAN, decoupled heads at strides 8, 16, 32.

    Returns {"out_8": (N, 5 + C, H/8, W/8), "out_16": ..., "out_32": ...}; `meta_arch` says
    what the channels mean. H and W must be multiples of 32.
    """

    def __init__(self, num_classes: int = 80, width: float = 0.25, depth: float = 0.33) -> None:
        super().__init__()
        self.backbone = CSPDarknetLite(width, depth)
        self.neck = PANLite(self.backbone.channels, max(round(3 * depth), 1))
        hidden = int(256 * width)
        self.heads = nn.ModuleList(
            DecoupledHead(c, hidden, num_classes) for c in self.backbone.channels
        )
        strides = (8, 16, 32)
        self.meta_arch = YOLOXMetaArch(num_classes, strides, tuple(f"out_{s}" for s in strides))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = self.neck(self.backbone(x))
        names = self.meta_arch.head_outputs
        return {name: head(m) for name, head, m in zip(names, self.heads, maps, strict=True)}


def yolox_nano_lite(num_classes: int = 80, **kwargs: object) -> YOLOX:
    """YOLOX-nano lite (width 0.25, depth 0.33, depthwise-separable), TI's
    yolox_nano_lite design; kwargs go to YOLOX (width, depth)."""
    return YOLOX(num_classes=num_classes, **kwargs)
