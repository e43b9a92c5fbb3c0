"""Does a QDQ export compute what QAT computes, in onnxruntime? Every zoo model, both schemes.

Each model is wrapped for QAT for a QDQ device (am68a) with each scheme: power-of-two per-tensor
(the TDA4VM grid, as QDQ) and per-channel weights with asymmetric activations. It is trained a few
SGD steps on the embedded Fashion-MNIST data (composite scenes for segmentation), exported with
export_format="qdq", and run one image at a time beside the QAT model's eval forward, twice: with
every onnxruntime fusion off (the graph's literal QDQ semantics) and with onnxruntime's integer
kernels (QLinearConv, QLinearAdd, ...). For each: the largest difference and the share of elements
within one step on the last quantized tensors (64 test images), and the share of test images
(pixels for segmentation) whose predicted class agrees. The machine's CPU flags are recorded:
without VNNI, onnxruntime's u8s8 kernels saturate int16 pair sums. Results go to
docs/qdq_agreement.json and a markdown table.

    python benchmarks/qdq_agreement.py
    python benchmarks/qdq_agreement.py --models resnet18 --schemes affine
"""

import argparse
import json
from itertools import islice
from pathlib import Path

import onnx
import torch
from integer_simulation import task_data
from machine import machine_description
from torch.utils.data import DataLoader, Subset

from edgezoo import export_onnx, list_models, model_info
from edgezoo.export.device_agreement import int8_agreement
from edgezoo.export.qdq_check import int8_kernels_may_saturate
from edgezoo.models import BUILDERS
from edgezoo.quantization import QuantizationConfig, QuantTrainModule

SCHEMES = {
    "power_of_two": QuantizationConfig(target="am68a"),
    "affine": QuantizationConfig(
        target="am68a", per_channel_weights=True, asymmetric_activations=True
    ),
}


def qat_model(name: str, data, size: int, config: QuantizationConfig, steps: int):
    """The model wrapped for QAT with `config`, trained `steps` SGD steps from random weights."""
    torch.manual_seed(0)
    model = BUILDERS[name](num_classes=data.num_classes)
    q = QuantTrainModule(model, torch.rand(1, 3, size, size), config=config)
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3, momentum=0.9)
    q.train()
    for images, targets in islice(DataLoader(data.train, batch_size=8, shuffle=True), steps):
        loss = torch.nn.functional.cross_entropy(q(images), targets, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return q.eval()


def test_images(data, limit: int) -> torch.Tensor:
    test = Subset(data.val, range(min(limit, len(data.val))))
    return torch.cat([images for images, _ in DataLoader(test, batch_size=64)])


def measure(name: str, scheme: str, args: argparse.Namespace) -> dict:
    size = args.seg_size if model_info(name)["task"] == "segmentation" else args.size
    data = task_data(name, size)
    q = qat_model(name, data, size, SCHEMES[scheme], args.steps)
    path = args.work / f"{name}_{scheme}.onnx"
    images = test_images(data, args.test_limit)
    report = export_onnx(q, path, example_input=images[:1], model_name=name, write_configs=False)
    proto = onnx.load(path)
    row = {"model": name, "scheme": scheme, "input": size, "export_ok": report.ok}
    for label, fused in (("semantics", False), ("int8", True)):
        steps = int8_agreement(proto, q, images[: args.images], fused=fused)
        top1 = int8_agreement(proto, q, images, fused=fused)
        row |= {
            f"{label}_max_steps": steps.max_steps,
            f"{label}_within_one_step": steps.share_within_one_step,
            f"{label}_top1_agreement": top1.top1_agreement,
        }
    path.unlink()
    return row | {"predictions": top1.predictions, "images": len(images)}


def table(results: list[dict]) -> list[str]:
    rows = [
        "| model | scheme | input | verified | QDQ semantics: max steps / within one step / "
        "top-1 agrees | ORT int8 kernels: max steps / within one step / top-1 agrees "
        "| test images |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        figures = [
            f"{r[f'{k}_max_steps']:.3g} / {100 * r[f'{k}_within_one_step']:.3f} % / "
            f"{100 * r[f'{k}_top1_agreement']:.2f} %"
            for k in ("semantics", "int8")
        ]
        rows.append(
            f"| {r['model']} | {r['scheme']} | {r['input']} | {'yes' if r['export_ok'] else 'no'} "
            f"| {figures[0]} | {figures[1]} | {r['images']} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models())
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--steps", type=int, default=5, help="QAT steps before measuring")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seg-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=64, help="images for the steps figures")
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("runs/qdq_agreement"))
    parser.add_argument("--out", type=Path, default=Path("docs/qdq_agreement.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    for name in args.models:
        for scheme in args.schemes:
            if any(r["model"] == name and r["scheme"] == scheme for r in results):
                continue
            results.append(measure(name, scheme, args))
            print("\n".join(table(results[-1:])[2:]), flush=True)
            machine = machine_description() | {"int8_kernels_saturate": int8_kernels_may_saturate()}
            args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
