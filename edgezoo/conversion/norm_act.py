"""Norm-act layers: a BatchNorm2d subclass that applies its own activation (timm's
BatchNormAct2d family). Its forward branches on self.training, so fx must not trace through
it; quantization needs its BatchNorm (to fold) and its activation (to range) apart."""

from torch import nn

__all__ = ["is_norm_act"]


def is_norm_act(module: nn.Module) -> bool:
    """A BatchNorm2d subclass with its own forward and an `act` module it applies."""
    return (
        isinstance(module, nn.BatchNorm2d)
        and type(module).forward is not nn.BatchNorm2d.forward
        and isinstance(getattr(module, "act", None), nn.Module)
    )
