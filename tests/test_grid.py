"""The power-of-two grid: grids, rounding, power-of-two scales, STE gradients, saturation."""

import pytest
import torch
from conftest import is_power_of_two

from edgezoo.errors import QuantizationConfigError
from edgezoo.quantization.grid import (
    _fake_quantize_activation,
    apply_outlier_constraint,
    ceil2,
    fake_quantize_activation,
    fake_quantize_bias,
    fake_quantize_weight,
    quant_limits,
    round_half_away,
    round_half_up,
    weight_scale,
)

BITWIDTHS = list(range(2, 17))


def reference_activation(x, clip_min, clip_max, bitwidth):
    """Float64 transcription of the contract: clamp, scale, floor(x + 0.5), clamp, rescale."""
    signed = clip_min < 0
    c = max(-clip_min, clip_max)
    scale = (2 ** (bitwidth - 1) if signed else 2**bitwidth) / c
    qmin, qmax = quant_limits(bitwidth, signed)
    q = torch.floor(x.double().clamp(clip_min, clip_max) * scale + 0.5).clamp(qmin, qmax)
    return q / scale


def test_ceil2_keeps_powers_of_two_and_rounds_others_up():
    powers = 2.0 ** torch.arange(-16, 31, dtype=torch.float32)
    assert torch.equal(ceil2(powers), powers)
    x = torch.tensor([3.0, 5.0, 1.0001, 0.3, 1000.0, 6.0])
    assert torch.equal(ceil2(x), torch.tensor([4.0, 8.0, 2.0, 0.5, 1024.0, 8.0]))
    tiny = torch.tensor([0.0, 1e-12, -3.0, 2.0**-17])
    assert torch.equal(ceil2(tiny), torch.full((4,), 2.0**-16))
    assert is_power_of_two(ceil2(torch.rand(1000) * 100))


def test_rounding_modes_differ_only_on_negative_ties():
    x = torch.tensor([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49, -0.51, 3.0])
    assert round_half_away(x).tolist() == [1, -1, 2, -2, 3, -3, 0, -1, 3]
    assert round_half_up(x).tolist() == [1, 0, 2, -1, 3, -2, 0, -1, 3]


@pytest.mark.parametrize("host_scalars", [True, False])
@pytest.mark.parametrize("bitwidth", BITWIDTHS)
@pytest.mark.parametrize("signed", [True, False])
def test_activation_values_lie_on_grid(bitwidth, signed, host_scalars):
    torch.manual_seed(bitwidth)
    clip = 2.0 ** (bitwidth % 5 - 2)
    clip_min = -clip if signed else 0.0
    x = torch.randn(4096) * clip * 1.5
    x[:4] = torch.tensor([clip_min, clip, 10 * clip, -10 * clip])
    y = _fake_quantize_activation(
        x, torch.tensor(clip_min), torch.tensor(clip), bitwidth, True, host_scalars
    )
    scale = (2 ** (bitwidth - 1) if signed else 2**bitwidth) / clip
    q = y * scale
    qmin, qmax = quant_limits(bitwidth, signed)
    assert torch.equal(q, torch.round(q))
    assert q.min() >= qmin and q.max() <= qmax
    assert y.min() >= clip_min and y.max() <= clip
    assert torch.equal(y.double(), reference_activation(x, clip_min, clip, bitwidth))


def test_activation_asymmetric_clip_is_respected():
    x = torch.linspace(-10, 10, 1001)
    y = fake_quantize_activation(x, torch.tensor(-2.0), torch.tensor(8.0), 8)
    assert y.min() == -2.0 and y.max() == 8.0 - 1 / 16
    assert torch.equal(y.double(), reference_activation(x, -2.0, 8.0, 8))


def test_activation_ties_round_up():
    scale = 2**7 / 4.0
    x = torch.tensor([0.5, -0.5, 1.5, -1.5]) / scale
    y = fake_quantize_activation(x, torch.tensor(-4.0), torch.tensor(4.0), 8)
    assert (y * scale).tolist() == [1, 0, 2, -1]


@pytest.mark.parametrize("host_scalars", [True, False])
def test_activation_ste_gradient_is_one_inside_zero_outside(host_scalars):
    x = torch.tensor([-9.0, -4.5, -3.9, -1.0, 0.0, 0.3, 2.0, 3.99, 4.01, 100.0])
    for clip_min, expected in (
        (-4.0, [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]),
        (0.0, [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]),
    ):
        xg = x.clone().requires_grad_(True)
        y = _fake_quantize_activation(
            xg, torch.tensor(clip_min), torch.tensor(4.0), 8, True, host_scalars
        )
        (y * 3).sum().backward()
        assert xg.grad.tolist() == [3.0 * e for e in expected]


@pytest.mark.parametrize("host_scalars", [True, False])
def test_rounding_off_is_plain_clamp(host_scalars):
    x = torch.randn(1000) * 10
    y = _fake_quantize_activation(x, torch.tensor(-4.0), torch.tensor(8.0), 8, False, host_scalars)
    assert torch.equal(y, torch.clamp(x, -4.0, 8.0))


def test_activation_accepts_floats_and_low_precision():
    x = (torch.randn(512) * 3).to(torch.bfloat16)
    y = fake_quantize_activation(x, -4.0, 4.0, 8)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y.double(), reference_activation(x.float(), -4.0, 4.0, 8))


@pytest.mark.parametrize("bitwidth", [2, 4, 8, 16])
def test_weight_fake_quant_on_power_of_two_grid(bitwidth):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * 0.3
    scale = weight_scale(w, bitwidth)
    assert scale.dim() == 0 and is_power_of_two(scale)
    assert scale == 2 ** (bitwidth - 1) / ceil2(w.abs().max())
    q = fake_quantize_weight(w, bitwidth) * scale
    qmin, qmax = quant_limits(bitwidth, signed=True)
    assert torch.equal(q, torch.round(q)) and q.min() >= qmin and q.max() <= qmax
    expected = torch.clamp(round_half_away(w * scale), qmin, qmax)
    assert torch.equal(q, expected)


@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_weight_scale(axis):
    torch.manual_seed(1)
    w = torch.randn(6, 5, 3, 3) * torch.logspace(-2, 1, 5).view(1, 5, 1, 1)
    w = w.transpose(0, 1).contiguous() if axis == 0 else w
    scale = weight_scale(w, 8, per_channel=True, axis=axis)
    expected_shape = [1] * 4
    expected_shape[axis] = w.shape[axis]
    assert list(scale.shape) == expected_shape
    dims = [d for d in range(4) if d != axis]
    assert torch.equal(scale, 128 / ceil2(w.abs().amax(dim=dims, keepdim=True)))
    q = fake_quantize_weight(w, 8, per_channel=True, axis=axis) * scale
    assert torch.equal(q, torch.round(q)) and q.abs().max() <= 128


def test_weight_and_bias_gradients_are_identity():
    w = (torch.randn(8, 4, 3, 3) * 0.2).requires_grad_(True)
    b = torch.randn(8).requires_grad_(True)
    upstream = torch.randn(8, 4, 3, 3)
    fake_quantize_weight(w, 8).backward(upstream)
    assert torch.equal(w.grad, upstream)
    fake_quantize_bias(b, torch.tensor(2.0**10), 8).backward(torch.ones(8))
    assert torch.equal(b.grad, torch.ones(8))


def test_zero_weights_stay_zero():
    w = torch.zeros(4, 4)
    assert torch.equal(fake_quantize_weight(w), w)
    assert weight_scale(w) == 128 * 2.0**16


@pytest.mark.parametrize("bitwidth", [8, 16])
def test_bias_saturates_at_joint_scale(bitwidth):
    # float64: 2^31 - 1 (the 16-bit saturation) has no float32 value.
    scale = torch.tensor(2.0**-3, dtype=torch.float64) * torch.tensor(2.0**5)
    limit = 2 ** (2 * bitwidth - 1)
    b = torch.tensor([1e12, -1e12, 0.3, -2.5 / 4, 5 / 4], dtype=torch.float64)
    q = fake_quantize_bias(b, scale, bitwidth) * scale
    # A signed 2b-bit integer, as TIDL stores biases: [-32768, 32767] at 8 bits.
    assert q.tolist() == [limit - 1, -limit, 1, -3, 5]


def test_outlier_constraint_clips_only_real_outliers():
    torch.manual_seed(0)
    base = torch.randn(1000) * 0.5
    median16 = 16 * base.abs().median()
    with_outlier = torch.cat([base, torch.tensor([100.0])])
    clipped, clip = apply_outlier_constraint(with_outlier)
    expected_clip = 120 / 128 * ceil2(torch.minimum(torch.tensor(100.0), median16))
    assert clip is not None and torch.equal(clip, expected_clip)
    assert clipped.abs().max() == expected_clip
    assert torch.equal(clipped[:-1], torch.clamp(base, -expected_clip, expected_clip))

    small_max = torch.cat([base, torch.tensor([14.0])])  # max <= 15: untouched
    out, clip = apply_outlier_constraint(small_max)
    assert clip is None and out is small_max
    wide = torch.randn(1000) * 20  # max > 15 but not > 16 * median
    out, clip = apply_outlier_constraint(wide)
    assert clip is None and out is wide


@pytest.mark.parametrize("bad", [1, 17, 0, 8.0, True])
def test_invalid_bitwidth_is_rejected(bad):
    with pytest.raises(QuantizationConfigError, match="bitwidth"):
        fake_quantize_activation(torch.zeros(2), -1.0, 1.0, bad)
