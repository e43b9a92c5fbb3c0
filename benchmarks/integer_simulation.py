"""Does QAT compute what TIDL's integer arithmetic computes? Every zoo model, 8 and 16 bits.

Each model is wrapped for QAT, trained a few steps on the embedded Fashion-MNIST data
(composite scenes for segmentation), exported, and compared with edgezoo.simulate_tidl on its
own export: the largest difference in output steps on 64 test images, the share of test images
(pixels for segmentation) whose predicted class agrees, and the throughput of the simulation
beside onnxruntime's float run of the same graph. Results go to docs/integer_simulation.json
and a markdown table.

    python benchmarks/integer_simulation.py                 # every model, 8 and 16 bits
    python benchmarks/integer_simulation.py --models resnet18 --bits 8
"""

import argparse
import json
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from edgezoo import export_onnx, list_models, model_info
from edgezoo.benchmarking import machine_description
from edgezoo.data import build_task_data
from edgezoo.engine.setup import preprocessing
from edgezoo.export import onnxruntime_session
from edgezoo.models import BUILDERS
from edgezoo.quantization import QuantizationConfig, QuantTrainModule
from edgezoo.simulation import TIDLSimulator


def task_data(name: str, size: int):
    task = model_info(name)["task"]
    mean, std = preprocessing(name)
    return build_task_data("embedded", task, size, mean, std, composite_scenes=(64, 256))


def qat_model(name: str, data, size: int, config: QuantizationConfig, steps: int):
    """The model wrapped for QAT with `config`, trained `steps` SGD steps from random weights."""
    torch.manual_seed(0)
    model = BUILDERS[name](num_classes=data.num_classes)
    q = QuantTrainModule(model, torch.rand(1, 3, size, size), config=config)
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3, momentum=0.9)
    loader = DataLoader(data.train, batch_size=8, shuffle=True)
    q.train()
    for images, targets in islice(loader, steps):
        loss = torch.nn.functional.cross_entropy(q(images), targets, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return q.eval()


def agreement(q, path: Path, data, images_for_steps: int, test_limit: int) -> dict:
    """Output steps apart on a few images, and predicted-class agreement on the test set."""
    test = Subset(data.val, range(min(test_limit, len(data.val))))
    simulator = TIDLSimulator(path)
    max_steps, agree, total, seen = 0.0, 0, 0, 0
    for images, _ in DataLoader(test, batch_size=64):
        with torch.no_grad():
            qat = q(images).double().numpy()
        (device,) = simulator(images, return_integers=True)
        if seen < images_for_steps:
            max_steps = max(max_steps, float(np.abs(qat * device.scale - device.integers).max()))
        agree += int((qat.argmax(1) == device.integers.argmax(1)).sum())
        total += qat.argmax(1).size
        seen += len(images)
    return {"max_output_steps": max_steps, "prediction_agreement": agree / total, "images": seen}


def throughput(path: Path, data, images: int) -> dict:
    """Images per second, one image at a time (the exported graph's static batch of 1), of the
    integer simulation and of onnxruntime's float run, measured side by side."""
    session = onnxruntime_session(path, threads=torch.get_num_threads())
    simulator = TIDLSimulator(path)
    batch = [data.val[i][0][None] for i in range(images)]
    seconds = {"simulation": 0.0, "onnxruntime": 0.0}
    for image in batch:
        clock = time.perf_counter()
        simulator(image)
        seconds["simulation"] += time.perf_counter() - clock
        clock = time.perf_counter()
        session.run(None, {"input": image.numpy()})
        seconds["onnxruntime"] += time.perf_counter() - clock
    return {f"{k}_images_per_s": images / v for k, v in seconds.items()}


def measure(name: str, bits: int, args: argparse.Namespace) -> dict:
    size = args.seg_size if model_info(name)["task"] == "segmentation" else args.size
    data = task_data(name, size)
    config = QuantizationConfig(bitwidth_weights=bits, bitwidth_activations=bits)
    q = qat_model(name, data, size, config, args.steps)
    path = args.work / f"{name}_{bits}.onnx"
    clock = time.perf_counter()
    report = export_onnx(q, path, input_size=(size, size), model_name=name, write_configs=False)
    export_s = time.perf_counter() - clock
    result = {
        "model": name,
        "bits": bits,
        "input": size,
        "export_ok": report.ok,
        "export_s": export_s,
        "export_integer_max_steps": report.integer_max_steps,
        **agreement(q, path, data, args.images, args.test_limit),
        **throughput(path, data, args.timed_images),
    }
    path.unlink()
    return result


def table(results: list[dict]) -> list[str]:
    rows = [
        "| model | bits | input | max output steps apart (64 images) | predictions agree "
        "| simulation images/s (batch 1) | onnxruntime images/s (batch 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['model']} | {r['bits']} | {r['input']} | {r['max_output_steps']:g} | "
            f"{100 * r['prediction_agreement']:.2f} % of {r['images']} | "
            f"{r['simulation_images_per_s']:.1f} | {r['onnxruntime_images_per_s']:.0f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models())
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--steps", type=int, default=5, help="QAT steps before measuring")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seg-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=64, help="images for the steps figure")
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--timed-images", type=int, default=16, help="images timed one by one")
    parser.add_argument("--work", type=Path, default=Path("runs/integer_simulation"))
    parser.add_argument("--out", type=Path, default=Path("docs/integer_simulation.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    done = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    results = list(done)
    for name in args.models:
        for bits in args.bits:
            if any(r["model"] == name and r["bits"] == bits for r in results):
                continue
            results.append(measure(name, bits, args))
            print("\n".join(table(results[-1:])[2:]), flush=True)
            args.out.write_text(
                json.dumps({"machine": machine_description(), "results": results}, indent=2)
            )
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
