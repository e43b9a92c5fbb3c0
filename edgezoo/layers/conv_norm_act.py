"""ConvNormAct: conv -> norm -> activation with torchvision's Conv2dNormActivation key layout."""

from collections.abc import Callable

from torch import nn


class ConvNormAct(nn.Sequential):
    """Conv2d, optional norm and optional activation as children 0/1/2, each its own instance.

    The numbered children give the same state_dict keys as torchvision's Conv2dNormActivation,
    so torchvision checkpoints load unchanged. Padding keeps the size at stride 1 ("same").
    The conv has a bias only when there is no norm layer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
        inplace: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2 * dilation,
                dilation=dilation,
                groups=groups,
                bias=norm_layer is None,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=inplace))
        super().__init__(*layers)
        self.out_channels = out_channels
