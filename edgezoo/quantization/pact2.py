"""PACT2: a clipping activation whose range is learned from batch statistics.

Each training batch yields a trimmed range (histogram tails below range_shrink_percentile % cut
off), folded into a running range with factor max(1/n, 0.001): a cumulative mean over the first
thousand batches, then an EMA. The clip is ceil2 of that range, so the deployed activation is a
plain Clip(min, max) with power-of-two bounds that TIDL maps to fixed-point shifts. With affine
scales (QDQ devices) the clip is the running range itself, holding zero, and the grid is the
QuantizeLinear grid of affine.py, with a zero point where the range is asymmetric.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
from torch import Tensor, nn

from edgezoo.errors import CheckpointMismatchError, QuantizationConfigError
from edgezoo.quantization.affine import (
    AFFINE_SCALES,
    POWER_OF_TWO_SCALES,
    affine_grid,
    check_activation_scales,
    fake_quantize_affine,
)
from edgezoo.quantization.grid import (
    ACTIVATION_ROUNDINGS,
    DEFAULT_ACTIVATION_ROUNDING,
    MIN_CLIP,
    activation_scale,
    ceil2,
    check_activation_rounding,
    check_bitwidth,
    fake_quantize_activation,
    is_power_of_two_range,
)
from edgezoo.quantization.learned_range import (
    LOG2_THRESHOLD,
    initial_log2_threshold,
    learned_clip,
    with_threshold_gradient,
)
from edgezoo.quantization.range_statistics import (
    HISTOGRAM_BINS,
    bin_counts,
    check_range_shrink,
    check_update_gap,
    subsample,
    trimmed_range,
)
from edgezoo.quantization.range_sync import sync_extrema_, sync_histogram_
from edgezoo.quantization.saved_flags import EXTRA_STATE_KEY, SavedFlagsMixin

__all__ = ["INITIAL_CLIP", "MIN_RUNNING_FACTOR", "PACT2", "RANGE_BUFFERS"]

logger = logging.getLogger(__name__)

INITIAL_CLIP = 8.0
MIN_RUNNING_FACTOR = 0.001
"""The running range becomes an EMA with this momentum after 1/MIN_RUNNING_FACTOR batches."""

RANGE_BUFFERS = ("clips_act", "running_min", "running_max", "num_batches_tracked")
"""The state_dict entries that make up a learned range."""


class PACT2(SavedFlagsMixin, nn.Module):
    """Clip and fake-quantize activations to a power-of-two range learned from statistics.

    Replaces ReLU/ReLU6 (unsigned) or follows layers without an activation (signed, or signed
    decided by the data when `signed` is None). In training mode, unless the range is frozen,
    each batch updates the running range; in eval mode the current clip is applied unchanged.
    Under torch.distributed the batch statistics are reduced across ranks, so all ranks keep
    identical clips, equal to one process seeing the whole batch.

    max_update_gap: how many training batches may pass between two measurements. A batch's
    statistics are measured when due; after a measurement that leaves the power-of-two clip
    unchanged the gap doubles (up to max_update_gap), after one that changes it the gap is 1
    again, so ranges are measured every batch while they move. A measurement counts for the
    batches since the previous one: the running range is the same batch-weighted mean (then EMA,
    after 1/MIN_RUNNING_FACTOR batches) as when every batch is measured. 1: every batch (TI).

    keep_when_missing: a state_dict without any of this range's entries (a float or torchvision
    checkpoint) leaves the range as it is instead of failing a strict load; False makes such a
    load fail, as evaluating needs trained ranges. The freeze and rounding switches, the rounding
    mode and the measurement schedule are saved with the range.

    learn_range: after the first training batch (or from a range already measured) the clip is
    trained by gradient in the log2 domain (learned_range.py, TQT) instead of by statistics: a
    parameter `log2_threshold`, clip 2^ceil of it, still a power of two. Only for power-of-two
    scales; a checkpoint with a learned threshold loads into a range that does not learn (its
    clip is saved in clips_act) and the other way round (the threshold starts from the clip).
    """

    FLAGS = (
        "range_frozen",
        "rounding_enabled",
        "_updates",
        "_update_gap",
        "_countdown",
        "_since_update",
        "_rounding_index",
        "asymmetric",
        "threshold_ready",
        "bitwidth",
    )
    SCHEME_FLAGS: ClassVar[dict[str, str]] = {
        "asymmetric": "QuantizationConfig(asymmetric_activations=...) with its target "
        "(--asymmetric-activations --target ...)",
        "bitwidth": "QuantizationConfig(bitwidth_activations=..., layer_bits=...) as it was "
        "trained (CLI: --layer-bits)",
    }

    @property
    def rounding_mode(self) -> str:
        """How this range rounds onto its grid (grid.ACTIVATION_ROUNDINGS; saved with it)."""
        return ACTIVATION_ROUNDINGS[self._rounding_index]

    clips_act: Tensor
    running_min: Tensor
    running_max: Tensor
    num_batches_tracked: Tensor

    def __init__(
        self,
        signed: bool | None = None,
        bitwidth: int = 8,
        range_shrink_percentile: float = 0.01,
        keep_when_missing: bool = True,
        max_update_gap: int = 1,
        rounding_mode: str = DEFAULT_ACTIVATION_ROUNDING,
        scales: str = POWER_OF_TWO_SCALES,
        asymmetric: bool = False,
        learn_range: bool = False,
    ) -> None:
        super().__init__()
        check_range_shrink(range_shrink_percentile)
        check_update_gap(max_update_gap, "max_update_gap")
        self.scales = check_activation_scales(scales)
        if asymmetric and scales != AFFINE_SCALES:
            raise QuantizationConfigError(
                "asymmetric ranges need affine scales (a zero point has no power-of-two "
                "form in TIDL's Clip graphs); pass scales='affine'"
            )
        if learn_range and scales != POWER_OF_TWO_SCALES:
            raise QuantizationConfigError(
                "learned ranges train power-of-two clips; affine (QDQ) scales take their range "
                "from statistics: drop learn_ranges or asymmetric_activations"
            )
        self.asymmetric = asymmetric
        self.learn_range = learn_range
        # Whether log2_threshold holds the range (else the next training batch starts it).
        self.threshold_ready = False
        self.signed = signed
        self.max_update_gap = max_update_gap
        self._rounding_index = ACTIVATION_ROUNDINGS.index(check_activation_rounding(rounding_mode))
        self.bitwidth = check_bitwidth(bitwidth)
        self.range_shrink_percentile = float(range_shrink_percentile)
        self.range_frozen = False
        self.rounding_enabled = True
        # Reduce statistics across ranks when distributed; turn off for single-rank passes
        # (e.g. calibrating on rank 0 only), where a collective would wait for the others.
        self.sync_ranks = True
        # Host copy of num_batches_tracked (training batches counted), read without a sync.
        self._batches_tracked = 0
        # The measurement schedule: measurements so far (the subsampling phase), the current
        # gap, batches until the next measurement, and batches the next one stands for.
        self._updates = 0
        self._update_gap = 1
        self._countdown = 0
        self._since_update = 1
        self._warned_non_finite = False
        initial_min = 0.0 if signed is False else -INITIAL_CLIP
        self.register_buffer("clips_act", torch.tensor([initial_min, INITIAL_CLIP]))
        self.register_buffer("running_min", torch.tensor(0.0))
        self.register_buffer("running_max", torch.tensor(0.0))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        if learn_range:
            self.register_parameter(LOG2_THRESHOLD, nn.Parameter(torch.tensor(0.0)))
        self._init_saved_flags()
        if keep_when_missing:
            self.register_load_state_dict_pre_hook(_keep_range_when_missing)
        self.register_load_state_dict_pre_hook(_match_learned_threshold)

    def forward(self, x: Tensor) -> Tensor:
        """Update the range (training, not frozen), then clip and fake-quantize x."""
        if self.learn_range:
            return self._learned_forward(x)
        if self.training and not self.range_frozen:
            self._track_batch(x.detach())
        return self.fake_quantize(x)

    def _learned_forward(self, x: Tensor) -> Tensor:
        """The forward of a learned range: statistics start it, the gradient moves it."""
        if self.training and not self.threshold_ready:
            if not self.trained:
                self._track_batch(x.detach())
            self._start_threshold()
        elif self.training and not self.range_frozen:
            self._count_batch()
        self._sync_learned_clip()
        y = self.fake_quantize(x)
        if not (self.training and torch.is_grad_enabled()):
            return y
        clip_min, clip_max = self.clip_range()
        return with_threshold_gradient(y, x, self.log2_threshold, clip_min, clip_max)

    @torch.no_grad()
    def _start_threshold(self) -> None:
        """log2_threshold from the current (measured) clip."""
        low, high = self.clip_range()
        self.log2_threshold.fill_(initial_log2_threshold(max(-low, high)))
        self.threshold_ready = True

    @torch.no_grad()
    def _sync_learned_clip(self) -> None:
        """clips_act from log2_threshold while the range learns (the sign stays as measured)."""
        if not (self.learn_range and self.threshold_ready and not self.range_frozen):
            return
        clip = learned_clip(self.log2_threshold).to(self.clips_act.dtype)
        self.clips_act[0] = torch.where(self.clips_act[0] < 0, -clip, 0.0)
        self.clips_act[1] = clip

    def fake_quantize(self, x: Tensor) -> Tensor:
        """x clipped and rounded onto this range's current grid (no statistics)."""
        if self.scales == AFFINE_SCALES:
            clip_min, clip_max = self.clip_range()
            return fake_quantize_affine(
                x, clip_min, clip_max, self.bitwidth, self.rounding_enabled, self.rounding_mode
            )
        # On CPU the clip is read once as host floats; elsewhere it stays on the device.
        clip_min, clip_max = self.clip_range() if x.device.type == "cpu" else self.clips_act
        return fake_quantize_activation(
            x, clip_min, clip_max, self.bitwidth, self.rounding_enabled, self.rounding_mode
        )

    def grid_scale(self) -> Tensor:
        """The multiplier from values to integer steps (value = n / scale), a 0-d tensor."""
        self._sync_learned_clip()
        if self.scales == AFFINE_SCALES:
            step = affine_grid(*self.clip_range(), self.bitwidth).scale
            return torch.tensor(1.0 / step, dtype=torch.float64, device=self.clips_act.device)
        return activation_scale(self.clips_act, self.bitwidth)

    def freeze_range(self, frozen: bool = True) -> None:
        """Stop (or, with frozen=False, resume) range updates; clipping and rounding go on.

        A learned range keeps the clip it has when frozen and, when unfrozen, learns on from it.
        """
        if self.learn_range and frozen != self.range_frozen:
            self._sync_learned_clip()
            if not frozen and self.threshold_ready:
                self.range_frozen = False
                self._start_threshold()
        self.range_frozen = frozen

    def enable_rounding(self, enabled: bool = True) -> None:
        """Round onto the grid (the QAT forward), or with False only clip (the exported float
        graph's arithmetic, for comparisons)."""
        self.rounding_enabled = enabled

    def clip_range(self) -> tuple[float, float]:
        """Current (clip min, clip max) as Python floats."""
        self._sync_learned_clip()
        low, high = self.clips_act.tolist()
        return low, high

    @property
    def trained(self) -> bool:
        """Whether the range has seen data (training or calibration); False: the initial clip."""
        return self._batches_tracked > 0

    @torch.no_grad()
    def _track_batch(self, x: Tensor) -> None:
        """Count a training batch, measuring its statistics when the schedule says so."""
        if self._countdown > 0:
            self._countdown -= 1
            self._since_update += 1
            self._count_batch()
            return
        clip_before = self.clips_act.clone()
        if not self._update_range(x, represented=self._since_update):
            return  # NaN/Inf or no elements: not counted; the next batch is measured
        unchanged = torch.equal(self.clips_act, clip_before)
        self._updates += 1
        self._update_gap = min(2 * self._update_gap, self.max_update_gap) if unchanged else 1
        self._countdown = self._update_gap - 1
        self._since_update = 1
        self._count_batch()

    def _count_batch(self) -> None:
        self._batches_tracked += 1
        self.num_batches_tracked.add_(1)

    def _update_range(self, x: Tensor, represented: int) -> bool:
        """Fold one batch's trimmed range into the running range; False if it had none."""
        sample = subsample(x, self._updates)
        # Packed for one MAX all-reduce: [-min, max, non-finite flag]; -inf is MAX's identity.
        stats = torch.full((3,), float("-inf"), dtype=sample.dtype, device=sample.device)
        stats[2] = 0.0
        if sample.numel() > 0:
            low, high = torch.aminmax(sample)
            finite = torch.isfinite(low) & torch.isfinite(high)
            stats[0] = torch.where(finite, -low, float("-inf"))
            stats[1] = torch.where(finite, high, float("-inf"))
            stats[2] = (~finite).to(stats.dtype)
        if self.sync_ranks:
            sync_extrema_(stats)
        neg_low, high, non_finite = stats.tolist()
        if non_finite:
            self._warn_non_finite()
            return False
        low = -neg_low
        if not low <= high:  # no elements on any rank
            return False
        counts = bin_counts(sample, low, high, HISTOGRAM_BINS)
        if self.sync_ranks:
            sync_histogram_(counts)
        new_low, new_high = trimmed_range(counts, low, high, self.range_shrink_percentile)
        # Batch-weighted: this batch stands for `represented` of the batches counted so far.
        batches = self._batches_tracked + 1
        factor = min(1.0, max(represented / batches, MIN_RUNNING_FACTOR * represented))
        self.running_min.lerp_(new_low.to(self.running_min.dtype), factor)
        self.running_max.lerp_(new_high.to(self.running_max.dtype), factor)
        self._update_clips()
        return True

    def _update_clips(self) -> None:
        """clips_act from the running range: ceil2 of it (power-of-two scales), or the range
        itself holding zero (affine), signed (-c, c) or unsigned (0, c) unless asymmetric."""
        if self.scales == AFFINE_SCALES:
            self._update_affine_clips()
            return
        abs_max = torch.abs(self.running_max)
        signed_clip = ceil2(torch.maximum(torch.abs(self.running_min), abs_max))
        if self.signed is None:
            is_signed = self.running_min < 0
            clip = torch.where(is_signed, signed_clip, ceil2(abs_max))
            self.clips_act[0] = torch.where(is_signed, -clip, 0.0)
            self.clips_act[1] = clip
        elif self.signed:
            self.clips_act[0] = -signed_clip
            self.clips_act[1] = signed_clip
        else:
            self.clips_act[0] = 0.0
            self.clips_act[1] = ceil2(abs_max)

    def _update_affine_clips(self) -> None:
        low = torch.clamp(self.running_min, max=0.0)
        high = torch.clamp(self.running_max, min=MIN_CLIP)
        signed = low < 0 if self.signed is None else torch.tensor(bool(self.signed))
        if not self.asymmetric:
            high = torch.maximum(-low, high)
            low = -high
        self.clips_act[0] = torch.where(signed, low, 0.0)
        self.clips_act[1] = high

    def _warn_non_finite(self) -> None:
        if not self._warned_non_finite:
            logger.warning(
                "PACT2: a batch with NaN/Inf activations was skipped for range statistics "
                "(range kept at %s); check the learning rate and the input data. "
                "Logged once per module.",
                self.clip_range(),
            )
            self._warned_non_finite = True

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        self._sync_learned_clip()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._batches_tracked = int(self.num_batches_tracked)
        low, high = self.clip_range()
        if self.scales == POWER_OF_TWO_SCALES and not is_power_of_two_range(low, high):
            raise CheckpointMismatchError(
                f"{prefix or 'range'}: the checkpoint's clip ({low:g}, {high:g}) is an affine "
                "range, not a power-of-two one: it was trained with asymmetric_activations; "
                "wrap the model with the same QuantizationConfig (--asymmetric-activations)"
            )

    def extra_repr(self) -> str:
        low, high = self.clip_range()
        scheme = "" if self.scales == POWER_OF_TWO_SCALES else f", scales={self.scales}"
        if self.asymmetric:
            scheme += ", asymmetric"
        if self.learn_range:
            scheme += ", learned"
        return (
            f"signed={self.signed}, bitwidth={self.bitwidth}, clip=({low:g}, {high:g}), "
            f"range_frozen={self.range_frozen}, rounding_enabled={self.rounding_enabled}{scheme}"
        )


def _keep_range_when_missing(
    module: PACT2, state_dict: dict[str, Tensor], prefix: str, *_: object
) -> None:
    """Load pre-hook: a checkpoint without any of the range's entries keeps the current range;
    one with some of them loads (and is checked) as usual."""
    if any(prefix + key in state_dict for key in RANGE_BUFFERS):
        return
    for key in RANGE_BUFFERS:
        state_dict[prefix + key] = getattr(module, key)
    logger.debug("%s: no range in the checkpoint, keeping the current one", prefix or "range")


def _match_learned_threshold(
    module: PACT2, state_dict: dict[str, Tensor], prefix: str, *_: object
) -> None:
    """Load pre-hook: a learned threshold in a checkpoint is dropped where the range does not
    learn (its clip is in clips_act), and a learning range without one in the checkpoint starts
    it from the loaded clip at its next training batch."""
    key = prefix + LOG2_THRESHOLD
    if not module.learn_range:
        state_dict.pop(key, None)
    elif key not in state_dict:
        state_dict[key] = module.log2_threshold.detach().clone()
        extra = state_dict.get(prefix + EXTRA_STATE_KEY)
        if extra is not None:
            flags = torch.as_tensor(extra).clone()
            index = PACT2.FLAGS.index("threshold_ready")
            if index < len(flags):
                flags[index] = 0
            state_dict[prefix + EXTRA_STATE_KEY] = flags
