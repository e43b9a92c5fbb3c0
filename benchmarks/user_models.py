"""Hand-written models in the styles users bring (written for the coverage benchmark, not from
any project): the patterns that tracing and module-only conversion find hardest."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class UNet(nn.Module):
    """Two-level UNet: functional ReLUs, max-pool down, nearest upsample, skip concatenation."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = _conv(3, 16), _conv(16, 32), _conv(32, 32)
        self.dec2, self.dec1 = _conv(64, 16), _conv(32, 16)
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(F.max_pool2d(e1, 2)))
        m = F.relu(self.mid(F.max_pool2d(e2, 2)))
        d2 = F.relu(self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0), e2], dim=1)))
        d1 = F.relu(self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], dim=1)))
        return self.head(d1)


class YoloNeck(nn.Module):
    """A YOLO-style backbone and top-down neck with SiLU, returning three heads as a tuple."""

    def __init__(self, outputs: int = 18) -> None:
        super().__init__()
        self.stem = _conv(3, 16, 2)
        self.c3, self.c4, self.c5 = _conv(16, 32, 2), _conv(32, 64, 2), _conv(64, 64, 2)
        self.lateral = nn.Conv2d(64, 32, 1)
        self.merge4, self.merge3 = _conv(128, 32), _conv(64, 32)
        self.heads = nn.ModuleList(nn.Conv2d(c, outputs, 1) for c in (32, 32, 64))

    def forward(self, x):
        c3 = F.silu(self.c3(F.silu(self.stem(x))))
        c4 = F.silu(self.c4(c3))
        c5 = F.silu(self.c5(c4))
        p4 = F.silu(self.merge4(torch.cat([F.interpolate(c5, scale_factor=2.0), c4], 1)))
        up = F.interpolate(self.lateral(c5), scale_factor=4.0)
        p3 = F.silu(self.merge3(torch.cat([up, c3], 1)))
        return self.heads[0](p3), self.heads[1](p4), self.heads[2](c5)


class InPlaceLoop(nn.Module):
    """Residual blocks applied in a loop with `x += block(x)` and one ReLU module reused."""

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        self.stem = _conv(3, 16)
        self.blocks = nn.ModuleList(_conv(16, 16) for _ in range(blocks))
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.stem(x))
        for block in self.blocks:
            x += block(x)
            x = self.relu(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    """Conv blocks each scaled per channel by a squeeze-excitation gate (x * sigmoid(...))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv(3, 32, 2), _conv(32, 32)
        self.reduce, self.expand = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        gate = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        x = x * torch.sigmoid(gate)
        return self.head(x.mean((2, 3)))


class ChannelShuffle(nn.Module):
    """ShuffleNet-style unit: chunk the channels, convolve one half, concatenate, shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv(3, 32, 2)
        self.branch = _conv(16, 16)
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        keep, work = x.chunk(2, dim=1)
        x = torch.cat([keep, F.relu(self.branch(work))], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(x).mean((2, 3))


class DictHeads(nn.Module):
    """A shared trunk with a classification and a segmentation head, returned as a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_conv(3, 16, 2), nn.ReLU(), _conv(16, 32, 2), nn.ReLU())
        self.classify = nn.Linear(32, 10)
        self.segment = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        f = self.trunk(x)
        return {"logits": self.classify(f.mean((2, 3))), "mask": self.segment(f)}


class DropoutHead(nn.Module):
    """Probe: a head whose dropout reads self.training (mode-dependent code in the forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(3, 16, 2), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return self.head(F.dropout(f, 0.3, training=self.training))


class ViewAlias(nn.Module):
    """Probe: an in-place add seen through a view taken before it (`low` must see the add)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv(3, 8)
        self.refine = _conv(8, 8)
        self.head = nn.Conv2d(12, 10, 1)

    def forward(self, x):
        f = F.relu(self.stem(x))
        low = f[:, :4]
        f += self.refine(f)
        return self.head(torch.cat([f, low], 1)).mean((2, 3))


USER_MODELS: dict[str, Callable[[], nn.Module]] = {
    "unet": UNet,
    "yolo_neck": YoloNeck,
    "inplace_loop": InPlaceLoop,
    "squeeze_excite": SqueezeExcite,
    "channel_shuffle": ChannelShuffle,
    "dict_heads": DictHeads,
    "dropout_head": DropoutHead,
    "view_alias": ViewAlias,
}
"""Name -> builder of each hand-written model."""
