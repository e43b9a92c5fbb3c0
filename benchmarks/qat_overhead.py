"""QAT training-step overhead: float vs edgezoo QuantTrainModule vs torch.ao eager QAT.

One training step = forward, cross-entropy, backward, SGD step. The three variants of each
architecture run in one process, alternating step by step, so machine load hits them alike;
the medians (wall clock and process CPU time) are printed as ratios to the float step.

    python benchmarks/qat_overhead.py --models resnet18 mobilenetv2 --steps 20

torch.ao eager QAT uses torchvision's quantizable model of the same architecture
(torchvision.models.quantization), fused with fuse_model(is_qat=True) and prepared with
prepare_qat and the default QAT qconfig of the chosen backend.
"""

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from machine import machine_description
from torch import nn
from tqdm import tqdm

from edgezoo.models import BUILDERS
from edgezoo.quantization import QuantTrainModule

TORCH_AO_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.quantization.resnet18,
    "resnet50": torchvision.models.quantization.resnet50,
    "mobilenetv2": torchvision.models.quantization.mobilenet_v2,
}


def torch_ao_qat(name: str, num_classes: int, backend: str) -> nn.Module:
    """torchvision's quantizable model, fused and prepared for eager-mode QAT."""
    model = TORCH_AO_BUILDERS[name](weights=None, quantize=False, num_classes=num_classes)
    model.train()
    model.fuse_model(is_qat=True)
    model.qconfig = torch.ao.quantization.get_default_qat_qconfig(backend)
    return torch.ao.quantization.prepare_qat(model)


def make_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One SGD training step of model on a fixed batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_alternating(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """(median wall seconds, median process CPU seconds) per step of each variant, round-robin.

    Process CPU time leaves out the time the process waits while other programs run, so on a
    shared machine it shows the work each variant does more steadily than the wall clock.
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for index in tqdm(range(warmup + repeats), desc="steps", leave=False):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            if index >= warmup:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--backend", default="x86", choices=["x86", "qnnpack", "fbgemm"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    host = machine_description()
    print(
        f"machine: {host['cpu']}, {host['torch_threads']} threads; torch "
        f"{host['torch']}, torchvision {torchvision.__version__}; batch {args.batch}, "
        f"{args.size}x{args.size}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"alternating"
    )
    print(
        "| model | float step, wall (s) | edgezoo QAT, wall | torch.ao eager QAT, wall "
        "| float step, CPU (s) | edgezoo QAT, CPU | torch.ao eager QAT, CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    num_classes = 1000
    for name in args.models:
        torch.manual_seed(0)
        images = torch.randn(args.batch, 3, args.size, args.size)
        labels = torch.randint(0, num_classes, (args.batch,))
        float_model = BUILDERS[name](num_classes=num_classes)
        ours = QuantTrainModule(copy.deepcopy(float_model), images[:1])
        steps = {
            "float": make_step(float_model, images, labels),
            "edgezoo": make_step(ours, images, labels),
            "torch.ao": make_step(torch_ao_qat(name, num_classes, args.backend), images, labels),
        }
        medians = time_alternating(steps, args.steps, args.warmup)
        cells = []
        for clock in (0, 1):
            base = medians["float"][clock]
            cells += [
                f"{base:.3f}",
                f"{medians['edgezoo'][clock] / base:.2f}x",
                f"{medians['torch.ao'][clock] / base:.2f}x",
            ]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
