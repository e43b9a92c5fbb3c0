"""edgezoo against the QAT tools a TIDL user would pick instead, at the same budget.

Every run starts from the same converged float checkpoint (../shared/checkpoints), sees the same
QAT budget as docs/accuracy.md's chosen recipe (4 sub-epochs of 25 batches of 128 training
images, the validation split held out), with AdamW at that recipe's learning rate, no weight
decay, the same per-sub-epoch cosine schedule, and is tested on the full 10000-image
Fashion-MNIST test split. Each (model, tool) runs in its own process (peers patch torch), which
also gives each run its own memory figure. Per run: test top-1 (with McNemar's test against
edgezoo's QAT), the training step's time as a ratio to the float step (alternated step by step
in one process), the peak resident memory while training, the ONNX it exports, the top-1 of
that ONNX in onnxruntime, TIDL's integer simulation of Clip graphs, and verify_onnx's verdict
for TDA4VM and for the newer devices. Peers are optional (pip install -e ".[peers]"; TI's v1
from a checkout given with --ti-path); a missing one is recorded as skipped with the reason.

    OMP_NUM_THREADS=1 python benchmarks/peers.py --ti-path /path/to/torchmodelopt
    python benchmarks/peers.py --report-only     # docs/benchmarks.md's Peers section
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
import peer_tools
from accuracy import mcnemar, model_data, pack, predictions, unpack
from machine import machine_description

from edgezoo.engine.optim import build_scheduler
from edgezoo.fileio import atomic_path

MODELS = ("mobilenetv2", "resnet18")
CHOSEN_LR = {"mobilenetv2": 1e-5, "resnet18": 1e-4}  # docs/accuracy.md, chosen on validation
RUNS = (
    "float",
    "edgezoo_ptq",
    "edgezoo_qat",
    "edgezoo_qat_distill",
    "edgezoo_qat_qdq",
    "ti_v1_ptq",
    "ti_v1_qat",
    "ti_v1_qat_module_only",
    "torch_ao_qat",
    "brevitas_qat",
    "nncf_qat",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--checkpoints", type=Path, default=Path("../shared/checkpoints"))
    parser.add_argument("--ti-path", type=Path, help="edgeai-tensorlab's torchmodelopt folder")
    parser.add_argument("--qat-epochs", type=int, default=4)
    parser.add_argument("--qat-batches", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ptq-batches", type=int, default=50)
    parser.add_argument("--timing-steps", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("runs/peers"))
    parser.add_argument("--out", type=Path, default=Path("docs/peers.json"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--recheck", action="store_true", help="redo the device checks from the saved ONNX files"
    )
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "RUN"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class PeakMemory:
    """Peak resident memory of this process (sampled from /proc every 5 ms) while in use."""

    def __enter__(self) -> "PeakMemory":
        self.start = self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def train_loop(model: nn.Module, sets: dict[str, Any], args, lr: float, on_epoch=None) -> None:
    """The shared QAT budget for peers: AdamW, no weight decay, cosine per sub-epoch, the same
    images in the same order (seed 0). on_epoch(model, epoch) runs at each sub-epoch's start."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, "cosine", args.qat_epochs)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(sets["train"], args.batch_size, shuffle=True, generator=generator)
    batches = iter(loader)
    for epoch in range(args.qat_epochs):
        model.train()
        if on_epoch is not None:
            on_epoch(model, epoch)
        for _ in range(args.qat_batches):
            images, labels = next(batches)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()


def step_time_ratio(model: nn.Module, float_model: nn.Module, sets, args) -> dict[str, float]:
    """Median over alternated pairs of (tool's training step / float step), one batch."""
    images, labels = next(iter(DataLoader(sets["train"], args.batch_size)))
    steps = []
    for net in (float_model, model):
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-9)
        net.train()
        steps.append((net, optimizer))
    ratios, float_times = [], []
    for pair in range(args.timing_steps + 2):
        times = []
        for net, optimizer in steps:
            started = time.perf_counter()
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        if pair >= 2:  # the first pairs warm caches and allocators
            ratios.append(times[1] / times[0])
            float_times.append(times[0])
    return {"ratio": statistics.median(ratios), "float_step_s": statistics.median(float_times)}


def run_one(model_name: str, run: str, args) -> dict[str, Any]:
    """One (model, tool) run in this process: prepare, train, test, export, verify, time."""
    torch.manual_seed(0)
    sets = model_data(model_name, args)
    tool = peer_tools.TOOLS[run](model_name, args)
    tool.check_available()
    float_model = peer_tools.float_model(model_name, args.checkpoints, torchvision_model=False)
    lr = CHOSEN_LR[model_name]
    started = time.perf_counter()
    with PeakMemory() as memory:
        model = tool.prepare(float_model, sets)
        tool.train(model, sets, lambda m, hook=None: train_loop(m, sets, args, lr, hook))
    seconds = time.perf_counter() - started
    evaluated = tool.deployed(model)
    predicted, target = predictions(evaluated, sets["data"].val)
    correct = (predicted == target).numpy()
    record = {
        "test_top1": 100.0 * correct.mean(),
        "test_correct": pack(correct),
        "seconds": seconds,
        "peak_rss_mib": memory.peak,
        "rss_before_mib": memory.start,
        "notes": tool.notes,
        "lr": lr,
    }
    record.update(peer_tools.export_and_check(tool, evaluated, sets, args.work / model_name, run))
    if tool.trains:
        record["step_time"] = step_time_ratio(model, float_model, sets, args)
    return record


def child(args) -> int:
    model_name, run = args.one
    torch.set_num_threads(1)
    try:
        record = run_one(model_name, run, args)
    except peer_tools.ToolMissing as missing:
        record = {"skipped": str(missing)}
    except Exception as error:  # a peer that fails is a result to report, not a crash
        record = {"failed": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
    record["machine"] = machine_description()
    record["date"] = time.strftime("%Y-%m-%d")
    path = args.work / f"{model_name}_{run}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(record, indent=1))
    return 0


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"models": {}}


def save_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(results, indent=1))


def measure(args) -> dict[str, Any]:
    """Every missing (model, run), each in a child process, saved to the json after each."""
    results = load_results(args.out)
    for model_name in args.models:
        for run in args.runs:
            done = results["models"].get(model_name, {}).get(run)
            if done is not None and "failed" not in done:
                continue
            command = [sys.executable, __file__, "--one", model_name, run, *child_flags(args)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            result_file = args.work / f"{model_name}_{run}.json"
            result_file.unlink(missing_ok=True)
            finished = subprocess.run(command, env=env).returncode
            if not result_file.exists():  # the child died before it could record why
                record = {"failed": f"the run's process exited with {finished}, no result"}
            else:
                record = json.loads(result_file.read_text())
            results["models"].setdefault(model_name, {})[run] = record
            save_results(results, args.out)
            print(f"{model_name} {run}: {short(record)}", flush=True)
    return results


def recheck_all(args) -> dict[str, Any]:
    """Every finished run's verify verdicts and simulation again from its saved ONNX."""
    results = load_results(args.out)
    for model_name, runs in results["models"].items():
        sets = model_data(model_name, args)
        for run, record in runs.items():
            path = args.work / model_name / f"{run}.onnx"
            if "kind" in record.get("export", {}) and path.exists():
                runs[run] = peer_tools.recheck(record, path, sets)
                save_results(results, args.out)
                print(f"{model_name} {run}: rechecked", flush=True)
    return results


def child_flags(args) -> list[str]:
    flags = ["--checkpoints", str(args.checkpoints), "--work", str(args.work)]
    flags += ["--qat-epochs", str(args.qat_epochs), "--qat-batches", str(args.qat_batches)]
    flags += ["--batch-size", str(args.batch_size), "--ptq-batches", str(args.ptq_batches)]
    flags += ["--timing-steps", str(args.timing_steps)]
    return flags + (["--ti-path", str(args.ti_path)] if args.ti_path else [])


def short(record: dict[str, Any]) -> str:
    if "test_top1" not in record:
        return record.get("skipped") or record.get("failed", "?")
    return f"top-1 {record['test_top1']:.2f}, {record['seconds']:.0f} s"


def paired(results: dict[str, Any]) -> None:
    """McNemar's test of every run against edgezoo's QAT on the same test images."""
    for runs in results["models"].values():
        reference = runs.get("edgezoo_qat", {}).get("test_correct")
        for record in runs.values():
            if reference and "test_correct" in record:
                first = unpack(record["test_correct"], 10000)
                record["vs_edgezoo_qat"] = mcnemar(first, unpack(reference, 10000))


def versions() -> dict[str, str]:
    """The installed versions of the tools compared (TI's v1 is a checkout: see the report)."""
    from importlib import metadata

    found = {}
    for package in ("torch", "torchvision", "onnxruntime", "brevitas", "nncf", "torchao"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return child(args)
    if args.recheck:
        results = recheck_all(args)
    else:
        results = load_results(args.out) if args.report_only else measure(args)
    paired(results)
    results["versions"] = versions()
    save_results(results, args.out)
    from peers_report import write_section

    write_section(results, Path("docs/benchmarks.md"))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
