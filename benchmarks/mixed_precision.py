"""16-bit layers chosen by measured sensitivity against random and TIDL-style choices.

From the converged float models of benchmarks/accuracy.py (ResNet18 and MobileNetV2 from
../shared/checkpoints' 55k checkpoints, DeepLabV3+ MobileNetV2 from its --work folder, on
composite scenes), for each model: PTQ (bias calibration, as accuracy.py's) at 8 bits, at 16
bits everywhere, and with 16-bit layers within 5, 10 and 20 % of the MACs chosen three ways:
edgezoo.select_16bit_layers (output SQNR gain per MAC measured on training batches, never the
test set), at random (seeded), and by TIDL's advice (first and last layers first, then inwards
from both ends). QAT (accuracy.py's TI schedule, lr 1e-5) runs at 8 bits, 16 bits and the 10 %
choices. Test figures with McNemar's test against the 8-bit run (classifiers). Results go to
docs/mixed_precision.json after every run (a killed run resumes) and docs/mixed_precision.md.

    OMP_NUM_THREADS=1 python benchmarks/mixed_precision.py
    python benchmarks/mixed_precision.py --report-only
"""

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accuracy import (
    CLASSIFIERS,
    SEGMENTER,
    Results,
    base_config,
    float_model,
    layer_figures,
    model_data,
    test_figures,
)
from torch.utils.data import DataLoader, Subset

from edgezoo.engine import TrainConfig, fit
from edgezoo.quantization import QuantizationConfig, select_16bit_layers, wrap_model
from edgezoo.quantization.selection import MixedPrecisionChoice

BUDGETS = (0.05, 0.1, 0.2)
QAT_BUDGETS = (0.1,)
METHODS = ("auto", "random", "heuristic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*CLASSIFIERS, SEGMENTER])
    parser.add_argument("--checkpoints", type=Path, default=Path("../shared/checkpoints"))
    parser.add_argument("--select-batches", type=int, default=4)
    parser.add_argument("--select-batch-size", type=int, default=64)
    parser.add_argument("--qat-epochs", type=int, default=4, help="QAT sub-epochs")
    parser.add_argument("--qat-batches", type=int, default=25, help="batches per sub-epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ptq-batches", type=int, default=50)
    parser.add_argument("--seg-float-epochs", type=int, default=16)
    parser.add_argument("--seg-scenes", type=int, nargs=2, default=(6000, 1000))
    parser.add_argument("--seg-batch-size", type=int, default=32)
    parser.add_argument("--no-qat", action="store_true", help="PTQ runs only")
    parser.add_argument("--work", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--out", type=Path, default=Path("docs/mixed_precision.json"))
    parser.add_argument("--report-only", action="store_true")
    return parser.parse_args(argv)


def selection(name: str, float_net, sets, args, results: Results) -> MixedPrecisionChoice:
    """The measured sensitivities (once per model, kept in the json)."""
    done = results.get(name, "selection")
    if done is None:
        generator = torch.Generator().manual_seed(0)
        batch = args.seg_batch_size if sets["task"] == "segmentation" else args.select_batch_size
        loader = DataLoader(sets["train"], batch_size=batch, shuffle=True, generator=generator)
        choice = select_16bit_layers(
            float_net, loader, budget=max(BUDGETS), batches=args.select_batches, progress=False
        )
        done = choice.to_dict()
        results.put(name, "selection", done)
    fields = MixedPrecisionChoice.__dataclass_fields__
    return MixedPrecisionChoice(**{k: done[k] for k in fields})


def layers_for(method: str, budget: float, choice: MixedPrecisionChoice) -> dict[str, int]:
    """The 16-bit layers one method picks within `budget` (a share of MACs)."""
    share = choice.macs_share
    if method == "auto":
        return choice.within(budget)
    names = list(share)  # in forward order
    if method == "random":
        random.Random(int(budget * 1000)).shuffle(names)
    else:  # first and last, then inwards from both ends
        names = [n for pair in zip(names, reversed(names), strict=True) for n in pair]
        names = list(dict.fromkeys(names))
    chosen, used = {}, 0.0
    for layer in names:
        if used + share[layer] <= budget + 1e-12:
            chosen[layer] = 16
            used += share[layer]
    return chosen


def run(float_net, sets, config: TrainConfig, layer_bits: dict[str, int] | None, wide: bool):
    """Calibrate or QAT-train a copy of the float model with these widths; its figures."""
    import copy

    mode = "calibrate" if config.mode == "calibrate" else "train"
    bits = 16 if wide else 8
    quantization = QuantizationConfig(
        bitwidth_weights=bits, bitwidth_activations=bits, layer_bits=layer_bits or None
    )
    example = torch.rand(1, 3, sets["size"], sets["size"])
    q = wrap_model(copy.deepcopy(float_net), mode, example, config=quantization)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    monitor = Subset(sets["val"], range(min(256, len(sets["val"]))))
    fit(q, sets["train"], monitor, config, progress=False)
    record = {"seconds": time.perf_counter() - started, "layer_bits": layer_bits or {}}
    record.update(test_figures(q, sets))
    return record, q


def measure(name: str, args: argparse.Namespace, results: Results) -> None:
    sets = model_data(name, args)
    float_net, _ = float_model(name, sets, args)
    base = base_config(name, sets, args)
    if results.get(name, "float") is None:
        results.put(name, "float", test_figures(float_net, sets))
    choice = selection(name, float_net, sets, args, results)
    ptq = replace(base, mode="calibrate", epochs=1, max_batches=args.ptq_batches)
    qat = replace(base, lr=1e-5)
    plans = [("ptq", ptq, BUDGETS)] + ([] if args.no_qat else [("qat", qat, QAT_BUDGETS)])
    for mode, config, budgets in plans:
        for label, layer_bits, wide in [("8bit", None, False), ("16bit", None, True)]:
            key = f"{mode}_{label}"
            if results.get(name, key) is None:
                record, q = run(float_net, sets, config, layer_bits, wide)
                if label == "8bit":
                    record["layers"] = layer_figures(q, sets)
                results.put(name, key, record)
        for method in METHODS:
            for budget in budgets:
                key = f"{mode}_{method}_{budget:g}"
                if results.get(name, key) is None:
                    layers = layers_for(method, budget, choice)
                    record, _ = run(float_net, sets, config, layers, False)
                    record["mac_share"] = sum(choice.macs_share[n] for n in layers)
                    results.put(name, key, record)


def describe(record: dict[str, Any]) -> str:
    """One line per finished run for the log."""
    if "sqnr_8bit_db" in record:
        return (
            f"SQNR {record['sqnr_8bit_db']:.2f} dB at 8 bits, {record['sqnr_selected_db']:.2f} "
            f"with {len(record['layer_bits'])} layers at 16, {record['seconds']:.0f} s"
        )
    figure = record.get("test_top1", record.get("test_miou"))
    return f"test {figure:.2f}, {len(record.get('layer_bits', {}))} layers at 16 bits"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results(args.out, args.work / "mixed_precision.lock", describe)
    if not args.report_only:
        for name in args.models:
            measure(name, args, results)
    from mixed_precision_report import write_report  # benchmarks/ is not a package

    write_report(results.data, args.out.with_suffix(".md"), args.out.parent)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
