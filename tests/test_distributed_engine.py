"""The engine under torchrun: two gloo processes on CPU train (QAT) and calibrate (PTQ) in step."""

import json
import os
import subprocess
import sys

import pytest
import torch

from edgezoo.engine import LAST, METRICS_JSON, read_checkpoint


@pytest.mark.parametrize("command", ["train", "train --qat", "calibrate"])
def test_two_process_run_keeps_replicas_identical(tmp_path, command):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "edgezoo.cli",
            *command.split(),
            "--model",
            "mobilenetv2",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-batches",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(out),
        ],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )
    checkpoint = read_checkpoint(out / LAST)
    assert checkpoint["world_size"] == 2 and checkpoint["epoch"] == 1
    record = json.loads((out / METRICS_JSON).read_text())["history"][0]
    # Every parameter and buffer (weights, BN statistics, activation ranges) of rank 1 equals
    # rank 0's after the epoch.
    assert record["replica_divergence"] == 0.0
    # (Float training updates BatchNorm statistics on each rank's shard; they are averaged over
    # the ranks at the end of the epoch, so its replicas are identical too.)
    state = checkpoint["model"]
    ranges = [key.removesuffix("clips_act") for key in state if key.endswith("clips_act")]
    if command != "train":
        assert ranges and all(torch.isfinite(state[f"{r}clips_act"]).all() for r in ranges)
        assert all(int(state[f"{r}num_batches_tracked"]) == 2 for r in ranges)  # both seen
    assert not list(out.glob("*.partial"))
