"""ResizeWith: upsampling restricted to what TIDL's Resize accepts."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgezoo.errors import InputShapeError, TIDLRuleError
from edgezoo.tidl.rules import RESIZE_TORCH_MODES, is_resize_scale


def validate_resize(scale_factor: object, mode: str, align_corners: bool | None = False) -> int:
    """Return the scale factor as an int, or raise if TIDL's Resize rules forbid the request."""
    if mode not in RESIZE_TORCH_MODES:
        raise TIDLRuleError(
            f"resize mode {mode!r} is not supported: TIDL's Resize accepts only "
            f"{' and '.join(RESIZE_TORCH_MODES)} (ONNX nearest / linear)"
        )
    if align_corners:
        raise TIDLRuleError(
            "align_corners=True is not supported: TIDL's Resize accepts only the half_pixel, "
            "pytorch_half_pixel and asymmetric coordinate modes; use align_corners=False"
        )
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, int | float):
        raise TIDLRuleError(
            f"scale_factor must be one number (equal for H and W, as TIDL requires), "
            f"got {scale_factor!r}"
        )
    if not is_resize_scale(scale_factor):
        raise TIDLRuleError(
            f"scale_factor {scale_factor!r} is not supported: TIDL's Resize needs an integer "
            f"power-of-two scale >= 1 (1, 2, 4, 8, ...); resize with a size input is not "
            f"supported either"
        )
    return int(scale_factor)


def resize_with(x: Tensor, scale_factor: int, mode: str = "bilinear") -> Tensor:
    """Upsample by a power-of-two factor with a mode and coordinate rule TIDL imports."""
    scale = validate_resize(scale_factor, mode)
    if scale == 1:
        return x
    align = False if mode == "bilinear" else None
    return F.interpolate(x, scale_factor=float(scale), mode=mode, align_corners=align)


class ResizeWith(nn.Module):
    """Parameter-free upsampling module with a TIDL-legal power-of-two scale factor.

    output_size: the (H, W) the resize must produce, where it stands for a resize to a fixed
    size (F.interpolate(size=...) converted at one input size): an input that the scale does not
    take to that size raises InputShapeError instead of giving another size than the original.
    """

    def __init__(
        self,
        scale_factor: int = 2,
        mode: str = "bilinear",
        output_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.scale_factor = validate_resize(scale_factor, mode)
        self.mode = mode
        self.output_size = None if output_size is None else tuple(int(v) for v in output_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.output_size is not None and not torch.jit.is_tracing():
            self._check_size(tuple(x.shape[-2:]))
        return resize_with(x, self.scale_factor, self.mode)

    def _check_size(self, size: tuple[int, int]) -> None:
        produced = tuple(v * self.scale_factor for v in size)
        if produced != self.output_size:
            h, w = self.output_size
            raise InputShapeError(
                f"this resize stands for a resize to the fixed size {h}x{w} (converted at an "
                f"input where that is x{self.scale_factor}); a {size[0]}x{size[1]} input would "
                f"give {produced[0]}x{produced[1]}: feed the input size the model was converted "
                "at, or convert (wrap) it again at the size you deploy"
            )

    def extra_repr(self) -> str:
        fixed = "" if self.output_size is None else f", output_size={self.output_size}"
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}{fixed}"
