"""Module-only ResNet / ResNeXt / Wide ResNet with torchvision's state_dict keys.

Same architecture and parameter names as torchvision.models.resnet, so torchvision checkpoints
load with strict=True and give the same outputs. Unlike torchvision, every range-changing op is a
module used exactly once per forward: each block has its own relu1/relu2(/relu3) and an AddBlock,
and pooling and flatten are modules. None of these carry parameters, so the keys are unchanged.
"""

from collections.abc import Callable

from torch import Tensor, nn

from edgezoo.errors import UsageError
from edgezoo.layers import AddBlock
from edgezoo.models.features import FeaturePlan

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]

DEFAULT_INPUT_SIZE = (224, 224)
"""(H, W) of the ImageNet evaluation crop the torchvision weights were measured at."""

NormLayer = Callable[[int], nn.Module]


def _conv3x3(
    in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, dilation: int = 1
) -> nn.Conv2d:
    """Bias-free 3x3 conv whose padding keeps the size at stride 1 for any dilation."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        groups=groups,
        bias=False,
    )


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free 1x1 conv (channel projection, optionally strided)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN stages plus a residual AddBlock (ResNet-18/34)."""

    expansion: int = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise UsageError(
                f"BasicBlock supports only groups=1 and width_per_group=64, got groups={groups}, "
                f"width_per_group={base_width}; use Bottleneck (resnet50 and deeper) for ResNeXt "
                f"or wide variants"
            )
        if dilation > 1:
            raise UsageError(
                "BasicBlock does not support dilation (replace_stride_with_dilation); "
                "use a Bottleneck ResNet such as resnet50"
            )
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.add = AddBlock()
        self.relu2 = nn.ReLU(inplace=True)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add((out, shortcut)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, grouped, dilated), 1x1 expand, plus a residual AddBlock.

    The stride sits on the 3x3 conv (ResNet v1.5), as in torchvision.
    """

    expansion: int = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_channels = planes * self.expansion
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = norm_layer(width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = _conv1x1(width, out_channels)
        self.bn3 = norm_layer(out_channels)
        self.downsample = downsample
        self.add = AddBlock()
        self.relu3 = nn.ReLU(inplace=True)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(self.add((out, shortcut)))


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """ResNet classifier: stem, four residual stages, global average pool, linear head."""

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: list[bool] | None = None,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise UsageError(
                f"replace_stride_with_dilation needs one flag per strided stage "
                f"(layer2, layer3, layer4), got {replace_stride_with_dilation!r}"
            )
        if len(layers) != 4:
            raise UsageError(f"layers needs four block counts (layer1..layer4), got {layers!r}")
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.groups = groups
        self.base_width = width_per_group
        self.in_channels = 64
        self.dilation = 1

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(
        self, block: Block, planes: int, num_blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        """One residual stage; `dilate` trades the stage's stride for dilation (keeps size)."""
        first_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(
                _conv1x1(self.in_channels, out_channels, stride), self._norm_layer(out_channels)
            )
        common = {
            "groups": self.groups,
            "base_width": self.base_width,
            "norm_layer": self._norm_layer,
        }
        blocks = [
            block(self.in_channels, planes, stride, downsample, dilation=first_dilation, **common)
        ]
        self.in_channels = out_channels
        blocks += [
            block(out_channels, planes, dilation=self.dilation, **common)
            for _ in range(1, num_blocks)
        ]
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He init for convs, identity BN; optionally zero the last BN of every residual branch."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def feature_plan(self) -> FeaturePlan:
        """The trunk in execution order; feature maps after the stem's ReLU and each layer
        (reductions 2, 4, 8, 16, 32 without dilation), as timm's ResNets."""
        stem = ("conv1", "bn1", "relu", "maxpool")
        layers = ("layer1", "layer2", "layer3", "layer4")
        return FeaturePlan(steps=stem + layers, taps=("relu", *layers))

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _resnet(block: Block, layers: list[int], num_classes: int, **kwargs: object) -> ResNet:
    return ResNet(block, layers, num_classes=num_classes, **kwargs)


def resnet18(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """ResNet-18 (torchvision layout)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """ResNet-34 (torchvision layout)."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """ResNet-50 v1.5 (torchvision layout)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


def resnet101(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """ResNet-101 v1.5 (torchvision layout)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, **kwargs)


def resnet152(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """ResNet-152 v1.5 (torchvision layout)."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes, **kwargs)


def resnext50_32x4d(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """ResNeXt-50 32x4d: 32 groups of width 4 in every 3x3 conv."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, groups=32, width_per_group=4, **kwargs)


def resnext101_32x8d(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """ResNeXt-101 32x8d: 32 groups of width 8 in every 3x3 conv."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, groups=32, width_per_group=8, **kwargs)


def resnext101_64x4d(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """ResNeXt-101 64x4d: 64 groups of width 4 in every 3x3 conv."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, groups=64, width_per_group=4, **kwargs)


def wide_resnet50_2(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """Wide ResNet-50-2: bottleneck width doubled (128 per group)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, width_per_group=128, **kwargs)


def wide_resnet101_2(num_classes: int = 1000, **kwargs: object) -> ResNet:
    """Wide ResNet-101-2: bottleneck width doubled (128 per group)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, width_per_group=128, **kwargs)
