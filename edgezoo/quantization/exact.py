"""Exact convolution of integer-valued tensors in float64: the integer graph's arithmetic.

Products of b-bit activations and weights summed over a kernel stay far below 2^53, so float64
sums them without rounding. PyTorch's float64 depthwise convolution is slow on CPU; as an unfold
and a per-channel product it runs at the speed of the float32 model.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

_UNFOLD_ELEMENTS = 1 << 26
"""Largest unfolded input (elements) a depthwise convolution builds at once; batches split."""


def exact_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> Tensor:
    """F.conv2d in float64 (x and weight integer-valued or on power-of-two grids: exact)."""
    x, weight = x.double(), weight.double()
    bias = None if bias is None else bias.double()
    channels = x.shape[1]
    if groups == 1 or not (groups == channels == weight.shape[0]):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    kernel = weight.shape[2:]
    rows = max(1, _UNFOLD_ELEMENTS // max(1, x[0].numel() * kernel.numel()))
    parts = [_depthwise(part, weight, stride, padding, dilation) for part in x.split(rows)]
    out = torch.cat(parts)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def _depthwise(
    x: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...], dilation
) -> Tensor:
    batch, channels, height, width = x.shape
    kernel = weight.shape[2:]
    columns = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    columns = columns.view(batch, channels, kernel.numel(), -1)
    out = torch.einsum("nckl,ck->ncl", columns, weight.view(channels, -1))
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return out.view(batch, channels, out_h, out_w)
