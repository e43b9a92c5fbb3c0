"""Module-only MobileNetV2 with torchvision's state_dict keys.

Same architecture and parameter names as torchvision.models.mobilenet_v2 (features.N.conv...,
classifier.1), so torchvision checkpoints load with strict=True and give the same outputs.
Unlike torchvision, residual adds go through an AddBlock and pooling and flatten are modules.
ReLU6 stays ReLU6 (torchvision's quantizable variant swaps it for ReLU, which changes the network).
"""

from collections.abc import Callable, Sequence
from functools import partial

from torch import Tensor, nn

from edgezoo.errors import UsageError
from edgezoo.layers import AddBlock, ConvNormAct
from edgezoo.models.features import FeaturePlan

__all__ = ["DEFAULT_INPUT_SIZE", "InvertedResidual", "MobileNetV2", "make_divisible", "mobilenetv2"]

DEFAULT_INPUT_SIZE = (224, 224)
"""(H, W) of the ImageNet evaluation crop the torchvision weights were measured at."""

NormLayer = Callable[[int], nn.Module]

# One row per stage: expansion t, output channels c, repeats n, stride of the first block s.
DEFAULT_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never losing more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection, optional AddBlock."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise UsageError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = round(in_channels * expand_ratio)
        conv_relu6 = partial(ConvNormAct, norm_layer=norm_layer, activation_layer=nn.ReLU6)
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_relu6(in_channels, hidden, 1))
        layers += [
            conv_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            norm_layer(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.add = AddBlock() if stride == 1 and in_channels == out_channels else None
        self.stride = stride
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return out if self.add is None else self.add((x, out))


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier: inverted-residual trunk, 1x1 to 1280, pool, dropout, linear."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        inverted_residual_setting: Sequence[Sequence[int]] | None = None,
        round_nearest: int = 8,
        block: Callable[..., nn.Module] | None = None,
        norm_layer: NormLayer | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        block = block or InvertedResidual
        norm_layer = norm_layer or nn.BatchNorm2d
        setting = (
            DEFAULT_SETTING if inverted_residual_setting is None else inverted_residual_setting
        )
        if not setting or any(len(row) != 4 for row in setting):
            raise UsageError(
                f"inverted_residual_setting needs one [t, c, n, s] row per stage, got {setting!r}"
            )

        conv_relu6 = partial(ConvNormAct, norm_layer=norm_layer, activation_layer=nn.ReLU6)
        in_channels = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [conv_relu6(3, in_channels, 3, stride=2)]
        for t, c, n, s in setting:
            out_channels = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(
                    block(in_channels, out_channels, s if i == 0 else 1, t, norm_layer=norm_layer)
                )
                in_channels = out_channels
        features.append(conv_relu6(in_channels, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for convs, identity BN, small normal init for the linear head."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def feature_plan(self) -> FeaturePlan:
        """The trunk without the 1x1 conv to 1280 (features.N-1, which only serves the
        classifier, as timm's conv_head); a feature map closes every stage whose next block
        downsamples, and the trunk's end (reductions 2, 4, 8, 16, 32 with the default setting)."""
        trunk = range(len(self.features) - 1)
        downsamples = [i for i in trunk if i > 0 and getattr(self.features[i], "stride", 1) == 2]
        taps = [i - 1 for i in downsamples] + [trunk[-1]]
        return FeaturePlan(
            steps=tuple(f"features.{i}" for i in trunk),
            taps=tuple(f"features.{i}" for i in taps),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def mobilenetv2(num_classes: int = 1000, **kwargs: object) -> MobileNetV2:
    """MobileNetV2 (torchvision layout); kwargs go to MobileNetV2, e.g. width_mult=1.4."""
    return MobileNetV2(num_classes=num_classes, **kwargs)
