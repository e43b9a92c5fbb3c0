"""docs/detection.md and its plot from docs/detection.json and the per-image test detections
benchmarks/detection.py keeps in --work/<model> (paired bootstrap over the test scenes)."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from edgezoo.detection import coco_map
from edgezoo.fileio import atomic_path

RUNS = ("float", "ptq", "qat")
PAIRS = (("qat", "float"), ("qat", "ptq"), ("ptq", "float"))
CLASSES = 10
QAT_GOAL_POINTS = 1.0


def bootstrap(work: Path, resamples: int, seed: int = 0) -> dict[str, Any]:
    """95 % intervals of each paired mAP difference, resampling the test scenes."""
    kept = {run: torch.load(work / f"{run}_test.pt", weights_only=False) for run in RUNS
            if (work / f"{run}_test.pt").exists()}  # fmt: skip
    if len(kept) < 2:
        return {}
    images = len(next(iter(kept.values()))["objects"])
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {run: [] for run in kept}
    for _ in range(resamples):
        chosen = rng.integers(0, images, size=images)
        for run, saved in kept.items():
            detections = [saved["detections"][i] for i in chosen]
            objects = [saved["objects"][i] for i in chosen]
            samples[run].append(coco_map(detections, objects, CLASSES)["map"])
    intervals = {}
    for a, b in PAIRS:
        if a in samples and b in samples:
            gap = np.array(samples[a]) - np.array(samples[b])
            intervals[f"{a}-{b}"] = [
                float(np.percentile(gap, 2.5)),
                float(np.percentile(gap, 97.5)),
            ]
    return {"resamples": resamples, "images": images, "intervals": intervals}


def write_report(data: dict[str, Any], args) -> None:
    """The markdown report (every model with a float run) and the plot, beside args.out."""
    models = {name: runs for name, runs in data["models"].items() if "float" in runs}
    if not models:
        return
    lines = [
        "# Detection on COMPOSITE scenes",
        "",
        "Written by `benchmarks/detection.py`:",
        "`OMP_NUM_THREADS=1 python benchmarks/detection.py`.",
        "",
        "Scenes are COMPOSITE (real Fashion-MNIST items on a blank canvas), not a real detection "
        "benchmark: these figures say how quantization moves mAP, not how the models would "
        "score on COCO. SSDLite's backbone starts from edgezoo's Fashion-MNIST MobileNetV2 "
        "classifier (../shared/checkpoints; no ImageNet weights offline), YOLOX from scratch. "
        "mAP by pycocotools' COCOeval; nothing was chosen on the test scenes.",
    ]
    for name, runs in models.items():
        lines += ["", *model_section(name, runs, data, args)]
    text = "\n".join(lines) + "\n"
    with atomic_path(args.out.with_suffix(".md")) as partial:
        partial.write_text(text)
    plot(models, args.out.with_suffix(".png"))


def model_section(name: str, runs: dict[str, Any], data: dict[str, Any], args) -> list[str]:
    stats = bootstrap(args.work / name, args.bootstrap)
    lines = [
        f"## {name}",
        "",
        f"Data: {runs['float'].get('data', '')}.",
        f"Machine: {data.get('machines', {}).get(name, {})}.",
        "",
        "| run | test mAP@[.5:.95] | test mAP@.5 | time (s) |",
        "|---|---|---|---|",
    ]
    for run in RUNS:
        if run in runs:
            r = runs[run]
            seconds = r.get("seconds", 0)
            lines.append(f"| {run} | {r['test_map']:.2f} | {r['test_map50']:.2f} | {seconds:.0f} |")
    qat = runs.get("qat")
    if qat is not None:
        lines += [
            f"| qat, integer simulation of its export | {qat['simulated_test_map']:.2f} | "
            f"{qat['simulated_test_map50']:.2f} | |",
            "",
            f"The QAT export: `export_ok` {qat['export_ok']}, integer simulation vs QAT "
            f"{qat['simulation_max_steps']} output steps apart; files written: "
            f"{', '.join(qat['meta_arch_files'])}.",
        ]
    if stats:
        lines += ["", f"Paired bootstrap over the {stats['images']} test scenes "
                  f"({stats['resamples']} resamples), 95 % interval of the mAP difference "
                  "(points):", ""]  # fmt: skip
        lines += [
            f"- {pair}: [{lo:+.2f}, {hi:+.2f}]" for pair, (lo, hi) in stats["intervals"].items()
        ]
    return [*lines, "", *goal_lines(runs)]


def goal_lines(runs: dict[str, Any]) -> list[str]:
    """The issue's goals, judged on these figures."""
    if "qat" not in runs or "ptq" not in runs:
        return ["Goals: not judged yet (QAT or PTQ not run)."]
    gap = runs["float"]["test_map"] - runs["qat"]["test_map"]
    over_ptq = runs["qat"]["test_map"] - runs["ptq"]["test_map"]
    return [
        f"Goal QAT within {QAT_GOAL_POINTS:g} mAP point of float at 8 bits: float - QAT = "
        f"{gap:.2f} -> {'met' if gap <= QAT_GOAL_POINTS else 'missed'}.",
        f"Goal QAT at least as good as PTQ: QAT - PTQ = {over_ptq:+.2f} -> "
        f"{'met' if over_ptq >= 0 else 'missed'}.",
    ]


def plot(models: dict[str, dict[str, Any]], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(RUNS)
    for k, run in enumerate(RUNS):
        heights = [runs[run]["test_map"] if run in runs else 0.0 for runs in models.values()]
        axes.bar(np.arange(len(models)) + k * width, heights, width, label=run)
    axes.set_xticks(np.arange(len(models)) + width, list(models))
    axes.set_ylabel("test mAP@[.5:.95] (%)")
    axes.set_title("Detection on COMPOSITE scenes")
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png", dpi=100)
    plt.close(figure)
