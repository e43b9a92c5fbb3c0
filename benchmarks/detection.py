"""Detection accuracy on COMPOSITE scenes: float, PTQ and QAT SSDLite-MobileNetV2-lite and
YOLOX-nano-lite, and each QAT export's integer simulation, with bootstrap confidence intervals
over the test scenes.

Scenes: 128x128 canvases of 1-6 real Fashion-MNIST items (24-64 px), boxes tight around each
item (edgezoo.data.composite_detection). Training scenes use training items only, test scenes
test items only. SSDLite's backbone starts from ../shared/checkpoints' Fashion-MNIST
MobileNetV2 classifier (no ImageNet weights offline; its training items never appear in test
scenes); YOLOX starts from scratch (torchvision has no CSPDarknet weights). The recipe is fixed
in advance (nothing is chosen on the test scenes): the float model trains a
fixed number of epochs and the last epoch is kept. Results go to docs/detection.json after each
run (a killed run resumes; the float models are kept in --work/<model>) and docs/detection.md.

    OMP_NUM_THREADS=1 python benchmarks/detection.py
    python benchmarks/detection.py --report-only
"""

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accuracy import Results
from torch.utils.data import DataLoader

import edgezoo
from edgezoo.data.composite_detection import CompositeFashionDetection
from edgezoo.data.fashion_mnist import load_embedded_fashion_mnist, load_fashion_mnist
from edgezoo.data.transforms import DetectionTransform
from edgezoo.detection import coco_map
from edgezoo.engine import TrainConfig, fit, simulated_metrics
from edgezoo.export import export_onnx
from edgezoo.tasks import build_task_data, get_task

MODELS = ("ssdlite_mobilenetv2_lite", "yolox_nano_lite")
QAT_RECIPES = {
    "qat": {},
    # TI's v1 schedule: BN statistics frozen after the first epoch, ranges before the last.
    "qat_freeze": {"bn_freeze_epoch": 1, "range_freeze_epoch": 2},
}
"""QAT runs; the one with the better last-epoch validation mAP is the chosen recipe."""
INPUT = 128
CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--data", default="fashion-mnist", help="items: fashion-mnist|embedded")
    parser.add_argument(
        "--scenes",
        type=int,
        nargs=3,
        default=(4000, 200, 500),
        help="train, validation (training items), test (test items) scenes",
    )
    parser.add_argument("--float-epochs", type=int, default=10)
    parser.add_argument("--float-lr", type=float, default=5e-3)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-lr", type=float, default=1e-4)
    parser.add_argument("--ptq-batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument(
        "--backbone",
        type=Path,
        default=Path("../shared/checkpoints/mobilenetv2_fashion_mnist_32px.pth"),
    )
    parser.add_argument("--work", type=Path, default=Path("runs/detection"))
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/detection.json"),
        help="results json; the report is written beside it (.md, .png)",
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)  # fmt: skip


def scene_sets(args: argparse.Namespace) -> dict[str, Any]:
    """Train (augmented) and validation scenes of training items; test scenes of test items."""
    train_scenes, val_scenes, test_scenes = args.scenes
    data = build_task_data(
        args.data, "detection", INPUT, composite_scenes=(train_scenes, test_scenes)
    )
    items = (
        load_embedded_fashion_mnist("train")
        if args.data == "embedded"
        else load_fashion_mnist(None, "train")
    )
    val = CompositeFashionDetection(
        items, length=val_scenes, seed=1000, canvas_size=INPUT, transform=DetectionTransform(INPUT)
    )
    description = data.description
    return {"train": data.train, "val": val, "test": data.val, "description": description}


def config(mode: str, epochs: int, lr: float, args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        task="detection", mode=mode, num_classes=CLASSES, epochs=epochs, lr=lr,
        batch_size=args.batch_size, optimizer="adamw", seed=0, ignore_index=None,
        weight_decay=1e-4 if mode == "float" else 0.0, warmup_epochs=1 if mode == "float" else 0,
    )  # fmt: skip


def float_model(name: str, sets: dict[str, Any], args: argparse.Namespace):
    """The float detector: trained once here (SSD's backbone from the classifier), then reused."""
    path = args.work / name / "float.pth"
    backbone = args.backbone if name.startswith("ssdlite") else False
    model = edgezoo.get_model(name, num_classes=CLASSES, pretrained_backbone=backbone)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model, None
    result = fit(
        model,
        sets["train"],
        sets["val"],
        config("float", args.float_epochs, args.float_lr, args),
        progress=not args.no_progress,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model, result.history


def test_figures(model: torch.nn.Module, sets: dict[str, Any], run: Path) -> dict[str, Any]:
    """mAP on the test scenes; the per-image detections are kept (run_test.pt) for the
    bootstrap."""
    model.eval()
    meter = get_task("detection").bind(model).make_meter(CLASSES, None)
    loader = DataLoader(sets["test"], batch_size=32, collate_fn=get_task("detection").collate_fn)
    with torch.no_grad():
        for images, targets in loader:
            meter.update(model(images), targets, torch.zeros(()))
    kept = {"detections": meter.detections, "objects": meter.objects}
    torch.save(kept, run.with_name(f"{run.name}_test.pt"))
    figures = coco_map(meter.detections, meter.objects, CLASSES, per_class=True)
    return {"test_map": figures["map"], "test_map50": figures["map50"],
            "test_ap_per_class": [figures[f"ap_class_{c}"] for c in range(CLASSES)]}  # fmt: skip


def measure(name: str, sets: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    """Float (trained here), PTQ and QAT of one detector, each saved as it finishes."""
    work = args.work / name
    started = time.perf_counter()
    float_net, history = float_model(name, sets, args)
    if results.get(name, "float") is None:
        record = {"data": sets["description"], "seconds": time.perf_counter() - started,
                  **test_figures(float_net, sets, work / "float")}  # fmt: skip
        if history is not None:
            record["training_history"] = history
        results.put(name, "float", record)
    example = torch.rand(1, 3, INPUT, INPUT)
    if results.get(name, "ptq") is None:
        started = time.perf_counter()
        ptq = edgezoo.wrap_model(_copy(name, float_net), "calibrate", example)
        calibrate = replace(config("calibrate", 1, 0.0, args), max_batches=args.ptq_batches)
        fit(ptq, sets["train"], sets["val"], calibrate, progress=not args.no_progress)
        results.put(name, "ptq", {"seconds": time.perf_counter() - started,
                                  **test_figures(ptq, sets, work / "ptq")})  # fmt: skip
    for run, settings in QAT_RECIPES.items():
        if results.get(name, run) is None:
            results.put(name, run, qat_run(name, float_net, sets, run, settings, args))


def qat_run(name: str, float_net, sets, run: str, settings: dict, args) -> dict[str, Any]:
    """One QAT recipe from the float model: its history, test mAP, export and simulation."""
    started = time.perf_counter()
    qat = edgezoo.wrap_model(_copy(name, float_net), "train", torch.rand(1, 3, INPUT, INPUT))
    qat_config = replace(config("qat", args.qat_epochs, args.qat_lr, args), **settings)
    result = fit(qat, sets["train"], sets["val"], qat_config, progress=not args.no_progress)
    return {
        "seconds": time.perf_counter() - started,
        "recipe": settings,
        "training_history": result.history,
        "val_map": result.history[-1]["val_map"],
        **test_figures(qat, sets, args.work / name / run),
        **exported(name, run, qat, sets, args),
    }


def exported(name: str, run: str, qat: torch.nn.Module, sets, args) -> dict[str, Any]:
    """The QAT export's own checks and the integer simulation's mAP on the test scenes."""
    path = args.work / name / f"{name}_{run}.onnx"
    report = export_onnx(qat, path, input_size=(INPUT, INPUT), model_name=name)
    simulated = simulated_metrics(
        path, sets["test"], "detection", CLASSES, batch_size=32, progress=not args.no_progress
    )
    return {
        "export_ok": report.ok,
        "simulation_max_steps": report.integer_max_steps,
        "simulated_test_map": simulated["map"],
        "simulated_test_map50": simulated["map50"],
        "meta_arch_files": sorted(str(p.name) for p in report.config_files.values()),
    }


def _copy(name: str, model: torch.nn.Module) -> torch.nn.Module:
    clone = edgezoo.get_model(name, num_classes=CLASSES)
    clone.load_state_dict(model.state_dict())
    return clone


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = Results(args.out, args.work / "results.lock", describe=_describe)
    if not args.report_only:
        sets = scene_sets(args)
        for name in args.models:
            measure(name, sets, args, results)
    from detection_report import write_report

    write_report(results.data, args)
    return 0


def _describe(record: dict[str, Any]) -> str:
    seconds = record.get("seconds", 0)
    return f"test mAP {record['test_map']:.2f}, mAP@.5 {record['test_map50']:.2f}, {seconds:.0f} s"


if __name__ == "__main__":
    sys.exit(main())
