"""TIDL's per-tensor power-of-two re-quantization keeps QAT grid weights exactly, edge cases too."""

import numpy as np
import pytest

from edgezoo.export.weight_grid import (
    GRID_TOLERANCE_STEPS,
    align_to_tidl_grid,
    ceil2,
    grid_error_steps,
    tidl_requantize,
    tidl_weight_scale,
)


def grid_weights(peak_integer: int, scale: float, seed: int = 0) -> np.ndarray:
    """Integers up to abs(peak) with `peak_integer` present, over a power-of-two scale."""
    rng = np.random.default_rng(seed)
    limit = abs(peak_integer)
    k = rng.integers(-limit + 1, limit, size=(16, 8, 3, 3))
    k.flat[5] = peak_integer
    return (k / scale).astype(np.float32)


def test_ceil2_is_exact_at_powers_of_two():
    assert ceil2(0.5) == 0.5
    assert ceil2(0.5000001) == 1.0
    assert ceil2(3.0) == 4.0
    assert ceil2(0.0) == 2.0**-16


def test_requantize_rounds_half_away_from_zero_and_clamps():
    w = np.array([0.5, -0.5, 1.5 / 128, -1.5 / 128, 0.25 / 128], dtype=np.float32)
    assert tidl_weight_scale(w) == 256.0
    expected = np.array([127, -128, 3, -3, 1], dtype=np.float64) / 256.0
    np.testing.assert_array_equal(tidl_requantize(w), expected.astype(np.float32))


@pytest.mark.parametrize("peak", [65, 100, 127, -128, -65])
@pytest.mark.parametrize("scale", [2.0**3, 2.0**7, 2.0**12])
def test_grid_weights_are_a_fixed_point(peak, scale):
    w = grid_weights(peak, scale)
    np.testing.assert_array_equal(tidl_requantize(w), w)
    assert tidl_weight_scale(w) == scale
    aligned, moved = align_to_tidl_grid(w, scale)
    assert moved == 0 and aligned is w


@pytest.mark.parametrize("scale", [2.0**3, 2.0**7, 2.0**12])
def test_negative_half_range_peak_keeps_the_qat_scale(scale):
    # k = -64 at the QAT scale: TIDL's ceil2 would see -0.5 * clip, a power of two, and double
    # the scale. The values survive (-128 at 2 * scale) but the accumulator grid halves.
    w = grid_weights(-64, scale, seed=4)
    np.testing.assert_array_equal(tidl_requantize(w), w)
    assert tidl_weight_scale(w) == 2 * scale
    aligned, moved = align_to_tidl_grid(w, scale)
    assert moved == 1 and aligned[np.unravel_index(5, w.shape)] < w.flat[5]
    assert tidl_weight_scale(aligned) == scale
    np.testing.assert_array_equal(tidl_requantize(aligned), w)
    assert grid_error_steps(aligned) <= GRID_TOLERANCE_STEPS


@pytest.mark.parametrize("scale", [2.0**3, 2.0**7, 2.0**12])
def test_positive_half_range_peak_is_nudged_back_onto_the_identity(scale):
    # QAT picked scale from max|w| in (64, 64.5)/scale, which then rounded to k = +64.
    w = grid_weights(64, scale, seed=1)
    w.flat[9] = 64 / scale
    raw = tidl_requantize(w)
    assert not np.array_equal(raw, w)  # TIDL would double the scale and clamp 128 -> 127
    aligned, moved = align_to_tidl_grid(w, scale)
    assert moved == 2
    np.testing.assert_array_equal(tidl_requantize(aligned), w)
    assert tidl_weight_scale(aligned) == scale
    assert np.abs(aligned - w).max() <= 2.0**-16 * 64 / scale
    assert grid_error_steps(aligned) <= GRID_TOLERANCE_STEPS
    assert grid_error_steps(w) > GRID_TOLERANCE_STEPS


def test_a_16_bit_half_range_peak_is_nudged_by_less_than_a_step():
    scale = 2.0**20
    w = grid_weights(2**14, scale, seed=2)
    assert grid_error_steps(w, 16) > GRID_TOLERANCE_STEPS
    aligned, moved = align_to_tidl_grid(w, scale, 16)
    assert moved == 1
    np.testing.assert_array_equal(tidl_requantize(aligned, 16), w)
    assert tidl_weight_scale(aligned, 16) == scale
    assert grid_error_steps(aligned, 16) <= GRID_TOLERANCE_STEPS


def test_float_weights_are_left_for_the_grid_check():
    w = np.random.default_rng(3).normal(size=(8, 4, 3, 3)).astype(np.float32)
    aligned, moved = align_to_tidl_grid(w, tidl_weight_scale(w))
    assert moved == 0 and aligned is w
    assert grid_error_steps(w) > GRID_TOLERANCE_STEPS


def test_all_zero_weights_are_on_the_grid():
    w = np.zeros((4, 4, 1, 1), dtype=np.float32)
    np.testing.assert_array_equal(tidl_requantize(w), w)
    assert grid_error_steps(w) == 0.0
