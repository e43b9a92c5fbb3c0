"""How a batch's activation range is measured: a subsampled histogram whose tails are trimmed
(TI's range_shrink_percentile), and the checks of the settings that steer it. PACT2 holds the
running range these measurements feed."""

import torch
from torch import Tensor

from edgezoo.errors import QuantizationConfigError

__all__ = [
    "HISTOGRAM_BINS",
    "bin_counts",
    "check_range_shrink",
    "check_update_gap",
    "subsample",
    "trimmed_range",
]

HISTOGRAM_BINS = 256
_SUBSAMPLE_STRIDE = 2
_SUBSAMPLE_MIN_SIZE = 4
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def subsample(x: Tensor, step: int) -> Tensor:
    """Flat float copy (or view) of x, stride-2 subsampled in H and W when both exceed 4.

    The phase cycles through the four (row, column) offsets with step, so every pixel is
    measured over four batches, and ranks that agree on step pick the same pixels.
    """
    if x.dim() == 4 and x.shape[2] > _SUBSAMPLE_MIN_SIZE and x.shape[3] > _SUBSAMPLE_MIN_SIZE:
        row, col = step % _SUBSAMPLE_STRIDE, (step // _SUBSAMPLE_STRIDE) % _SUBSAMPLE_STRIDE
        x = x[:, :, row::_SUBSAMPLE_STRIDE, col::_SUBSAMPLE_STRIDE]
    if x.dtype in _LOW_PRECISION or not x.is_contiguous():
        # One pass gathers the strided pixels and converts dtype; histogramming needs float32.
        dtype = torch.float32 if x.dtype in _LOW_PRECISION else x.dtype
        flat = torch.empty(x.numel(), dtype=dtype, device=x.device)
        flat.view(x.shape).copy_(x)
        return flat
    return x.reshape(-1)


def bin_counts(
    sample: Tensor, low: float, high: float, bins: int, use_bincount: bool | None = None
) -> Tensor:
    """int64 counts of sample in `bins` equal bins over [low, high] (high in the last bin)."""
    scaled = torch.sub(sample, low).mul_(bins / (high - low) if high > low else 0.0)
    scaled.clamp_(max=bins - 1)
    if use_bincount is None:
        use_bincount = sample.device.type == "cpu"
    if use_bincount:
        # bincount on int32 indices is ~3x faster than histc on CPU and counts exactly.
        return torch.bincount(scaled.to(torch.int32), minlength=bins)
    # On accelerators bincount syncs to size its output; histc over [0, bins] does not.
    return torch.histc(scaled, bins=bins, min=0, max=bins).to(torch.int64)


def trimmed_range(
    counts: Tensor, low: float, high: float, percentile: float
) -> tuple[Tensor, Tensor]:
    """Range left after trimming whole histogram bins from each tail.

    Bins are dropped from an end while the dropped share stays below `percentile` % of all
    counts, so the result brackets the percentile quantile to within one bin width.
    Returns 0-d float tensors on counts' device (no host sync).
    """
    bins = counts.numel()
    width = (high - low) / bins
    # float64 keeps integer counts exact far beyond float32's 2^24.
    threshold = counts.sum().to(torch.float64) * (percentile / 100.0)
    dropped_low = (torch.cumsum(counts, 0) < threshold).sum()
    dropped_high = (torch.cumsum(counts.flip(0), 0) < threshold).sum()
    new_low = low + dropped_low * width
    new_high = torch.maximum(high - dropped_high * width, new_low)
    return new_low, new_high


def check_range_shrink(percentile: float) -> float:
    """A range_shrink_percentile: the share trimmed from each tail, in [0, 50)."""
    if isinstance(percentile, bool) or not isinstance(percentile, int | float):
        percentile = float("nan")
    if not 0.0 <= percentile < 50.0:
        raise QuantizationConfigError(
            f"range_shrink_percentile is a percentage per tail in [0, 50), got {percentile!r}; "
            "TI's default 0.01 trims 0.01 % from each tail"
        )
    return float(percentile)


def check_update_gap(gap: int, name: str) -> int:
    """A most number of training batches between two range measurements: an int >= 1."""
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 1:
        raise QuantizationConfigError(
            f"{name} is a number of batches >= 1, got {gap!r}; 1 measures every batch"
        )
    return gap
