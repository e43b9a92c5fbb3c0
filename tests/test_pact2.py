"""PACT2 range learning: statistics, running average, modes, NaN safety, checkpoints, DDP."""

import logging

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import is_power_of_two

from edgezoo.errors import QuantizationConfigError
from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.range_statistics import bin_counts, trimmed_range
from edgezoo.quantization.range_sync import is_distributed

GAUSSIAN_TAIL_QUANTILE = 3.719  # P(X > 3.719) = 0.01 % for X ~ N(0, 1)


def buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_buffers_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, a[key], b[key])


def test_gaussian_trimmed_range_and_clip():
    torch.manual_seed(0)
    pact = PACT2()
    for _ in range(8):
        pact(torch.randn(8, 16, 64, 64))
    # Trimming keeps the bin holding the quantile: bias of at most one bin width (~0.04).
    assert pact.running_max.item() == pytest.approx(GAUSSIAN_TAIL_QUANTILE + 0.02, abs=0.07)
    assert pact.running_min.item() == pytest.approx(-GAUSSIAN_TAIL_QUANTILE - 0.02, abs=0.07)
    assert pact.clip_range() == (-4.0, 4.0)
    assert pact.num_batches_tracked.item() == 8


def test_trimmed_range_drops_whole_bins_below_threshold():
    counts = torch.zeros(256, dtype=torch.int64)
    counts[0], counts[1], counts[2:254], counts[254], counts[255] = 1, 1, 10, 3, 1
    total = int(counts.sum())
    low, high = trimmed_range(counts, 0.0, 256.0, percentile=100 * 2.5 / total)
    # Low tail: 1, 1+1 < 2.5 are dropped, 1+1+10 is not. High tail: 1 < 2.5, 1+3 is not.
    assert (low.item(), high.item()) == (2.0, 255.0)
    low, high = trimmed_range(counts, -1.0, 1.0, percentile=0.0)
    assert (low.item(), high.item()) == (-1.0, 1.0)


def test_bin_counts_paths_agree():
    torch.manual_seed(0)
    sample = torch.randn(10000) * 3
    low, high = sample.min().item(), sample.max().item()
    by_bincount = bin_counts(sample, low, high, 256, use_bincount=True)
    by_histc = bin_counts(sample, low, high, 256, use_bincount=False)
    assert by_bincount.dtype == by_histc.dtype == torch.int64
    assert torch.equal(by_bincount, by_histc)
    assert by_bincount.sum() == 10000 and by_bincount[0] >= 1 and by_bincount[-1] >= 1


def test_unsigned_range_for_relu_like_input():
    torch.manual_seed(0)
    auto, explicit = PACT2(), PACT2(signed=False)
    assert explicit.clip_range() == (0.0, 8.0)
    for _ in range(3):
        x = torch.relu(torch.randn(4, 8, 16, 16)) * 1.5
        auto(x), explicit(x)
    for pact in (auto, explicit):
        low, high = pact.clip_range()
        assert low == 0.0 and high in (4.0, 8.0)
    signed = PACT2(signed=True)
    signed(torch.relu(torch.randn(4, 8, 16, 16)))
    assert signed.clip_range()[0] == -signed.clip_range()[1]


def ramp(amplitude: float) -> torch.Tensor:
    """A 3-D batch (no subsampling) whose untrimmed range is exactly (-amplitude, amplitude)."""
    return torch.linspace(-amplitude, amplitude, 257).view(1, 1, -1)


def test_running_range_is_cumulative_mean_then_ema():
    pact = PACT2(range_shrink_percentile=0.0)
    amplitudes = [1.0, 3.0, 2.0, 6.0]
    for i, amplitude in enumerate(amplitudes, start=1):
        pact(ramp(amplitude))
        mean = sum(amplitudes[:i]) / i
        assert pact.running_max.item() == pytest.approx(mean, rel=1e-6)
        assert pact.running_min.item() == pytest.approx(-mean, rel=1e-6)
    assert pact.clip_range() == (-4.0, 4.0)  # ceil2(3.0)

    state = pact.state_dict()
    state["num_batches_tracked"] = torch.tensor(5000)
    pact.load_state_dict(state)
    before = pact.running_max.item()
    pact(ramp(100.0))
    assert pact.running_max.item() == pytest.approx(before + 0.001 * (100.0 - before), rel=1e-6)
    assert pact.num_batches_tracked.item() == 5001


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_batch_is_skipped_with_one_warning(bad_value, caplog):
    pact = PACT2()
    pact(torch.randn(2, 4, 8, 8))
    before = buffers(pact)
    bad = torch.randn(2, 4, 8, 8)
    bad[1, 2, 4:6, 4:6] = bad_value  # a 2x2 block: every subsampling phase measures it
    with caplog.at_level(logging.WARNING, logger="edgezoo.quantization.pact2"):
        pact(bad)
        pact(bad)
    assert_buffers_equal(buffers(pact), before)
    warnings = [r for r in caplog.records if "NaN/Inf" in r.getMessage()]
    assert len(warnings) == 1
    pact(torch.randn(2, 4, 8, 8))
    assert pact.num_batches_tracked.item() == 2


def test_eval_does_not_update_and_train_resumes():
    torch.manual_seed(0)
    pact = PACT2()
    pact(torch.randn(2, 4, 8, 8))
    before = buffers(pact)
    pact.eval()
    out = pact(torch.randn(2, 4, 8, 8) * 50)
    assert_buffers_equal(buffers(pact), before)
    assert out.abs().max() <= 4.0
    pact.train()
    pact(torch.randn(2, 4, 8, 8) * 50)
    assert pact.num_batches_tracked.item() == 2
    assert pact.running_max > before["running_max"]


def test_freeze_range_stops_updates_but_keeps_clipping():
    torch.manual_seed(0)
    pact = PACT2()
    pact(torch.randn(2, 4, 8, 8))
    pact.freeze_range()
    before = buffers(pact)
    out = pact(torch.randn(2, 4, 8, 8) * 50)
    assert_buffers_equal(buffers(pact), before)
    low, high = pact.clip_range()
    assert out.min() >= low and out.max() <= high and out.max() > high - 0.1
    pact.freeze_range(False)
    pact(torch.randn(2, 4, 8, 8) * 50)
    assert pact.num_batches_tracked.item() == 2


def test_rounding_off_gives_plain_clamp():
    torch.manual_seed(0)
    pact = PACT2()
    pact(torch.randn(2, 4, 8, 8))
    pact.eval()
    pact.enable_rounding(False)
    x = torch.randn(2, 4, 8, 8) * 3
    assert torch.equal(pact(x), torch.clamp(x, *pact.clip_range()))
    pact.enable_rounding(True)
    q = pact(x) * 128 / pact.clip_range()[1]
    assert torch.equal(q, torch.round(q))


def test_clips_are_always_powers_of_two():
    torch.manual_seed(0)
    pact = PACT2()
    for scale in (0.01, 0.3, 7.0, 1000.0, 2.0**-20):
        pact(torch.randn(2, 4, 8, 8) * scale)
        assert is_power_of_two(pact.clips_act[1:]) and pact.clips_act[0] == -pact.clips_act[1]


def test_state_dict_round_trip_restores_clips_and_continuation():
    torch.manual_seed(0)
    pact = PACT2()
    for _ in range(3):
        pact(torch.randn(2, 4, 16, 16) * 2)
    state = pact.state_dict()
    # The range's buffers, and its freeze/rounding flags (_extra_state: they change results).
    assert set(state) == {
        "clips_act",
        "running_min",
        "running_max",
        "num_batches_tracked",
        "_extra_state",
    }
    restored = PACT2()
    restored.load_state_dict(state)
    assert restored.clip_range() == pact.clip_range()
    x = torch.randn(2, 4, 16, 16) * 3
    pact.eval(), restored.eval()
    assert torch.equal(restored(x), pact(x))
    pact.train(), restored.train()
    pact(x), restored(x)  # same subsampling phase after the load
    assert_buffers_equal(buffers(restored), buffers(pact))


def test_rejects_bad_settings():
    with pytest.raises(QuantizationConfigError, match="range_shrink_percentile"):
        PACT2(range_shrink_percentile=60)
    with pytest.raises(QuantizationConfigError, match="bitwidth"):
        PACT2(bitwidth=1)


def make_batches() -> list[torch.Tensor]:
    """Full batches shared by the DDP ranks and the single-process reference."""
    generator = torch.Generator().manual_seed(123)
    batches = [torch.randn(4, 3, 12, 10, generator=generator) * (1 + i) for i in range(5)]
    batches[2][3, 1, 4:6, 6:8] = float("nan")  # in rank 1's half: every rank must skip step 2
    return batches


def ddp_worker(rank: int, world_size: int, init_method: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        assert is_distributed()
        pact = PACT2()
        history = []
        for batch in make_batches():
            half = batch.shape[0] // world_size
            pact(batch[rank * half : (rank + 1) * half])
            history.append(buffers(pact))
        torch.save(history, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_agree_with_single_process(tmp_path):
    assert not is_distributed()
    init_method = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(ddp_worker, args=(2, init_method, str(tmp_path)), nprocs=2, join=True)

    reference = PACT2()
    expected = []
    for batch in make_batches():
        reference(batch)
        expected.append(buffers(reference))
    assert expected[2]["num_batches_tracked"] == expected[1]["num_batches_tracked"]

    for rank in range(2):
        history = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(history) == len(expected)
        for step, (got, want) in enumerate(zip(history, expected, strict=True)):
            for key in want:
                assert torch.equal(got[key], want[key]), (rank, step, key, got[key], want[key])
