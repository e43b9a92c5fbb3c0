"""What each device's quantization scheme buys: QAT per scheme from one float checkpoint.

MobileNetV2 (depthwise convolutions are where per-tensor power-of-two grids lose most) on
Fashion-MNIST at 32x32: one float model, then QAT for the same epochs with each scheme:

- tda4vm: power-of-two per-tensor, half-up rounding, exported as a Clip graph (TI's v1 flow);
- qdq power-of-two: the same grid for a QDQ device (am68a), rounding half to even as ONNX does;
- per-channel: power-of-two weight scales per output channel (QDQ devices);
- asymmetric: affine activations with zero points (QDQ devices);
- per-channel + asymmetric: both (TIDL's quantization_scale_type 4).

For each: the QAT model's test top-1 (QuantTrainModule in eval), and the device's, from the
export: TIDL's integer arithmetic (edgezoo.simulate_tidl) for the Clip graph, onnxruntime's int8
kernels for the QDQ graphs. Writes docs/scheme_accuracy.md and .json.

    python benchmarks/scheme_accuracy.py --float-checkpoint runs/range_update_gap/float/last.pth
"""

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import onnx
from torch.utils.data import DataLoader, Subset

from edgezoo import export_onnx
from edgezoo.benchmarking import machine_description
from edgezoo.data import build_task_data
from edgezoo.engine import TrainConfig, evaluate, fit
from edgezoo.engine.checkpoint import LAST
from edgezoo.engine.setup import build_model, preprocessing
from edgezoo.export.qdq_check import ProbeRunner
from edgezoo.quantization import QuantizationConfig
from edgezoo.simulation import simulated_metrics

MODEL = "mobilenetv2"
SCHEMES = {
    "tda4vm (Clip graph)": QuantizationConfig(),
    "qdq power-of-two": QuantizationConfig(target="am68a"),
    "qdq per-channel": QuantizationConfig(target="am68a", per_channel_weights=True),
    "qdq asymmetric": QuantizationConfig(target="am68a", asymmetric_activations=True),
    "qdq per-channel + asymmetric": QuantizationConfig(
        target="am68a", per_channel_weights=True, asymmetric_activations=True
    ),
}


def train_config(mode: str, epochs: int, lr: float, batch: int) -> TrainConfig:
    return TrainConfig(
        mode=mode,
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        optimizer="adamw",
        weight_decay=0.05,
        warmup_epochs=1 if mode == "float" else 0,
        seed=0,
        metadata={"model": MODEL},
    )


def float_checkpoint(args: argparse.Namespace, data) -> Path:
    """The given float checkpoint, or one trained (and kept) under --runs."""
    if args.float_checkpoint is not None:
        return args.float_checkpoint
    out = args.runs / "float"
    if not (out / LAST).is_file():
        model = build_model(MODEL, 10, args.input_size, seed=0)
        config = train_config("float", args.float_epochs, 5e-3, args.batch)
        fit(model, data.train, data.val, config, out, progress=False)
    return out / LAST


def onnxruntime_top1(path: Path, dataset) -> float:
    """Top-1 of a QDQ graph in onnxruntime's int8 kernels, one image at a time."""
    runner = ProbeRunner(onnx.load(path), [], optimize=True)
    correct = total = 0
    for images, targets in DataLoader(dataset, batch_size=64):
        for image, target in zip(images.split(1), targets, strict=True):
            (logits,), _ = runner(image.numpy())
            correct += int(np.argmax(logits) == int(target))
            total += 1
    return 100.0 * correct / total


def scheme_run(args, data, checkpoint: Path, name: str, config: QuantizationConfig) -> dict:
    """QAT with one scheme; the QAT model's and the device's test top-1."""
    q = build_model(MODEL, 10, args.input_size, mode="qat", checkpoint=checkpoint, config=config)
    started = time.perf_counter()
    fit(q, data.train, data.val, train_config("qat", args.qat_epochs, 1e-4, args.batch))
    seconds = time.perf_counter() - started
    eval_config = train_config("qat", 1, 1e-4, 256)
    qat_top1 = evaluate(q, data.val, eval_config, progress=False)["top1"]
    path = args.runs / f"{name.split()[0]}_{abs(hash(name)) % 10000}.onnx"
    example = data.val[0][0][None]
    report = export_onnx(q, path, example_input=example, model_name=MODEL, write_configs=False)
    if config.for_qdq:
        device = onnxruntime_top1(path, data.val)
    else:
        device = simulated_metrics(path, data.val, "classification", 10, progress=False)["top1"]
    return {
        "scheme": name,
        "config": config.to_dict(),
        "qat_top1": qat_top1,
        "device_top1": device,
        "device": "onnxruntime int8" if config.for_qdq else "edgezoo.simulate_tidl",
        "export_ok": report.ok,
        "qat_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float-checkpoint", type=Path)
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--float-epochs", type=int, default=4)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--runs", type=Path, default=Path("runs/scheme_accuracy"))
    parser.add_argument("--out", type=Path, default=Path("docs/scheme_accuracy"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.runs.mkdir(parents=True, exist_ok=True)
    mean, std = preprocessing(MODEL)
    data = build_task_data("fashion-mnist", "classification", args.input_size, mean, std)
    data = dataclasses.replace(
        data, train=Subset(data.train, range(min(args.train_limit, len(data.train))))
    )
    checkpoint = float_checkpoint(args, data)
    float_model = build_model(MODEL, 10, args.input_size, checkpoint=checkpoint)
    float_top1 = evaluate(float_model, data.val, train_config("float", 1, 1e-4, 256))["top1"]
    runs = [scheme_run(args, data, checkpoint, name, SCHEMES[name]) for name in args.schemes]
    host = machine_description()
    lines = [
        f"MobileNetV2, Fashion-MNIST {len(data.train)} train / {len(data.val)} test at "
        f"{args.input_size}x{args.input_size}; one float checkpoint (test top-1 "
        f"{float_top1:.2f}), then QAT {args.qat_epochs} epochs (AdamW 1e-4) per scheme; "
        f"{host['cpu']}, {host['torch_threads']} threads, torch {host['torch']}.",
        "",
        "| scheme | QAT top-1 | device top-1 | device run | QAT s |",
        "|---|---|---|---|---|",
        *(
            f"| {r['scheme']} | {r['qat_top1']:.2f} | {r['device_top1']:.2f} | {r['device']} | "
            f"{r['qat_seconds']:.0f} |"
            for r in runs
        ),
    ]
    record = {"machine": host, "float_top1": float_top1, "checkpoint": str(checkpoint)}
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(record | {"runs": runs}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
