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

RUNS = ("float", "ptq", "qat", "qat_freeze")
QAT_RUNS = ("qat", "qat_freeze")
CLASSES = 10
QAT_GOAL_POINTS = 1.0


def chosen_qat(runs: dict[str, Any]) -> str | None:
    """The QAT recipe with the better last-epoch validation mAP (never the test figure)."""
    done = [run for run in QAT_RUNS if run in runs]
    return max(done, key=lambda run: runs[run]["training_history"][-1]["val_map"], default=None)


def bootstrap(work: Path, resamples: int, chosen: str | None, seed: int = 0) -> dict[str, Any]:
    """95 % intervals of the chosen QAT's and PTQ's paired mAP differences, resampling the
    test scenes."""
    pairs = [(chosen, "float"), (chosen, "ptq"), ("ptq", "float")] if chosen else []
    needed = {run for pair in pairs for run in pair}
    kept = {run: torch.load(work / f"{run}_test.pt", weights_only=False) for run in needed
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
    for a, b in pairs:
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
    chosen = chosen_qat(runs)
    stats = bootstrap(args.work / name, args.bootstrap, chosen)
    lines = [
        f"## {name}",
        "",
        f"Data: {runs['float'].get('data', '')} (the 500 'val' scenes, of test items, are the "
        "test scenes; the validation scenes that choose the QAT recipe are 200 more of "
        "training items).",
        f"Machine: {data.get('machines', {}).get(name, {})}.",
        "",
        "| run | validation mAP | test mAP@[.5:.95] | test mAP@.5 | time (s) |",
        "|---|---|---|---|---|",
    ]
    for run in RUNS:
        if run in runs:
            r = runs[run]
            history = r.get("training_history") or [{}]
            val = history[-1].get("val_map")
            val_text = "-" if val is None else f"{val:.2f}"
            mark = " (chosen)" if run == chosen else ""
            lines.append(
                f"| {run}{mark} | {val_text} | {r['test_map']:.2f} | {r['test_map50']:.2f} | "
                f"{r.get('seconds', 0):.0f} |"
            )
    qat = runs.get(chosen) if chosen else None
    if qat is not None:
        lines += [
            f"| {chosen}, integer simulation of its export | | {qat['simulated_test_map']:.2f} | "
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
    return [*lines, "", *goal_lines(runs, chosen)]


def goal_lines(runs: dict[str, Any], chosen: str | None) -> list[str]:
    """The issue's goals, judged on the chosen QAT recipe's figures."""
    if chosen is None or "ptq" not in runs:
        return ["Goals: not judged yet (QAT or PTQ not run)."]
    gap = runs["float"]["test_map"] - runs[chosen]["test_map"]
    over_ptq = runs[chosen]["test_map"] - runs["ptq"]["test_map"]
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
