"""Export benchmark: export + verify time and node counts per model, and ONNX Runtime latency.

Part 1 exports every requested model, float and QAT (ranges from a few random training
batches), at its default input size and reports the wall time of export_onnx (trace, onnxsim,
verification, onnxruntime parity, TIDL configs) with the graph's node counts.

Part 2 measures onnxruntime latency (1x3x224x224, median of many runs, 1 thread and default
threads) of our QAT mobilenetv2 and resnet18 exports against torchvision's float models of the
same architecture exported the standard way (torch.onnx.export, TorchScript, opset 11, constant
folding). The two graphs run alternately in one process so machine load hits them alike; the
ratio ours / torchvision is the figure of merit (goal: at most 1.05).

    python benchmarks/export.py                       # all models, prints markdown
    python benchmarks/export.py --models resnet18 mobilenetv2 --runs 200 --write-docs
"""

import argparse
import io
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision
from docs_sections import replace_section
from machine import machine_description
from tqdm import tqdm

from edgezoo.export import export_onnx, onnxruntime_session
from edgezoo.models import BUILDERS
from edgezoo.quantization import QuantTrainModule
from edgezoo.registry import default_input_size

LATENCY_MODELS = {
    "mobilenetv2": torchvision.models.mobilenet_v2,
    "resnet18": torchvision.models.resnet18,
}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SECTION = "## Export"


def qat_model(name: str, size: tuple[int, int, int], batches: int = 3) -> QuantTrainModule:
    """A QAT-wrapped model whose ranges were learned from a few random training batches."""
    torch.manual_seed(0)
    q = QuantTrainModule(BUILDERS[name](), torch.rand(1, *size))
    q.train()
    with torch.no_grad():
        for _ in range(batches):
            q(torch.randn(2, *size))
    return q


def export_table(names: list[str], folder: Path) -> list[str]:
    """Markdown rows: model, kind, input, export+verify seconds, node counts by type."""
    rows = []
    for name in tqdm(names, desc="export"):
        size = default_input_size(name)
        for kind in ("float", "QAT"):
            model = qat_model(name, size) if kind == "QAT" else BUILDERS[name]()
            start = time.perf_counter()
            report = export_onnx(
                model, folder / f"{name}_{kind}.onnx", input_size=size, model_name=name
            )
            seconds = time.perf_counter() - start
            counts = ", ".join(f"{op} {n}" for op, n in sorted(report.node_counts.items()))
            status = "OK" if report.ok else "FAILED"
            rows.append(
                f"| {name} | {kind} | {size[1]}x{size[2]} | {seconds:.1f} | {status} | {counts} |"
            )
            (folder / f"{name}_{kind}.onnx").unlink()
    return rows


def torchvision_export(name: str) -> bytes:
    """torchvision's float model exported the standard way (TorchScript, opset 11)."""
    model = LATENCY_MODELS[name]().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 224, 224),),
            buffer,
            opset_version=11,
            do_constant_folding=True,
            input_names=["input"],
            dynamo=False,
        )
    return buffer.getvalue()


def time_alternating(
    runners: dict[str, Callable[[], object]], runs: int, warmup: int
) -> dict[str, float]:
    """Median seconds per run of each runner, measured in round-robin order."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for index in range(warmup + runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def latency_table(folder: Path, runs: int, warmup: int) -> list[str]:
    """Markdown rows: model, threads, our QAT ms, torchvision float ms, ratio."""
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32)}
    rows = []
    for name in tqdm(LATENCY_MODELS, desc="latency"):
        path = folder / f"{name}_qat_224.onnx"
        export_onnx(qat_model(name, (3, 224, 224)), path, input_size=(224, 224))
        ours_proto = onnx.load(path)
        theirs_proto = onnx.load_from_string(torchvision_export(name))
        for threads, label in ((1, "1"), (0, f"default ({os.cpu_count()} cores)")):
            ours = onnxruntime_session(ours_proto, threads=threads)
            theirs = onnxruntime_session(theirs_proto, threads=threads)
            medians = time_alternating(
                {
                    "ours": lambda s=ours: s.run(None, feed),
                    "theirs": lambda s=theirs: s.run(None, feed),
                },
                runs,
                warmup,
            )
            ratio = medians["ours"] / medians["theirs"]
            rows.append(
                f"| {name} | {label} | {medians['ours'] * 1e3:.2f} | "
                f"{medians['theirs'] * 1e3:.2f} | {ratio:.3f} |"
            )
    return rows


def markdown(export_rows: list[str], latency_rows: list[str], runs: int, command: str) -> str:
    """The Export section of docs/benchmarks.md."""
    import onnxruntime

    host = machine_description()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        SECTION,
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores, load average {load} (shared, "
        f"noisy); torch {host['torch']}, onnxruntime {onnxruntime.__version__}. "
        f"Command: `{command}`.",
        "",
    ]
    if export_rows:
        lines += [
            "Export + verify wall time (export_onnx: trace, onnxsim, TIDL rules, onnxruntime "
            "parity, TIDL configs) at each model's default input size, opset 11:",
            "",
            "| model | kind | input | seconds | verified | nodes |",
            "|---|---|---|---|---|---|",
            *export_rows,
            "",
        ]
    lines += [
        f"onnxruntime latency, 1x3x224x224, median of {runs} runs, our QAT export vs "
        "torchvision's float model exported the standard way, run alternately in one process "
        "(goal: ratio <= 1.05):",
        "",
        "| model | threads | edgezoo QAT ms | torchvision float ms | ratio |",
        "|---|---|---|---|---|",
        *latency_rows,
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace (or append) the Export section of docs/benchmarks.md, leaving the rest as is."""
    replace_section(DOCS, SECTION, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(BUILDERS), help="models to export")
    parser.add_argument("--runs", type=int, default=200, help="timed onnxruntime runs")
    parser.add_argument("--warmup", type=int, default=20, help="untimed onnxruntime runs")
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOCS}")
    args = parser.parse_args()
    command = "python benchmarks/export.py " + " ".join(
        [
            *(["--models", *args.models] if args.models != list(BUILDERS) else []),
            "--runs",
            str(args.runs),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_rows = export_table(args.models, folder)
        latency_rows = latency_table(folder, args.runs, args.warmup)
    text = markdown(export_rows, latency_rows, args.runs, command.strip())
    print(text)
    if args.write_docs:
        write_section(text)


if __name__ == "__main__":
    main()
