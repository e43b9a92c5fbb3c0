"""Norm layers the tracer keeps whole.

Norm-act layers: a BatchNorm2d subclass that applies its own activation (timm's BatchNormAct2d
family). Its forward branches on self.training, so fx must not trace through it; quantization
needs its BatchNorm (to fold) and its activation (to range) apart.

torchvision's FrozenBatchNorm2d (detection backbones): traced through, it becomes functional ops
on its buffers; kept whole, quantization folds it into its conv like a BatchNorm.
"""

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["is_frozen_batch_norm", "is_norm_act"]


def is_norm_act(module: nn.Module) -> bool:
    """A BatchNorm2d subclass with its own forward and an `act` module it applies."""
    return (
        isinstance(module, nn.BatchNorm2d)
        and type(module).forward is not nn.BatchNorm2d.forward
        and isinstance(getattr(module, "act", None), nn.Module)
    )


def is_frozen_batch_norm(module: nn.Module) -> bool:
    """torchvision's FrozenBatchNorm2d itself (a subclass may compute something else)."""
    return type(module) is FrozenBatchNorm2d
