"""Is measuring range statistics less often safe? QAT with max_range_update_gap 1 vs 4.

From one float checkpoint, QAT runs with every batch measured (gap 1, TI's rule) and with the
adaptive gap (up to 4 batches between measurements while a clip stays put) are compared, for
several seeds: test top-1, the final power-of-two clips (share of ranges whose clip is the
same), the share of batches measured, and the QAT epoch time. Writes a markdown table and JSON.

    python benchmarks/range_update_gap.py --train-limit 20000 --seeds 0 1 2
"""

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from machine import machine_description
from torch.utils.data import Subset

from edgezoo.engine import TrainConfig, evaluate, fit
from edgezoo.engine.run_dir import LAST
from edgezoo.engine.setup import build_model
from edgezoo.quantization import QuantizationConfig, activation_ranges
from edgezoo.registry import preprocessing
from edgezoo.tasks import build_task_data

MODEL = "mobilenetv2"


def train_config(mode: str, epochs: int, lr: float, seed: int, batch: int) -> TrainConfig:
    return TrainConfig(
        mode=mode,
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        optimizer="adamw",
        weight_decay=0.05,
        warmup_epochs=1 if mode == "float" else 0,
        seed=seed,
        metadata={"model": MODEL},
    )


def float_checkpoint(args: argparse.Namespace, data) -> Path:
    """Train (or reuse) the float model every QAT run starts from."""
    out = args.runs / "float"
    if (out / LAST).is_file():
        return out / LAST
    model = build_model(MODEL, 10, args.input_size, seed=0)
    fit(
        model,
        data.train,
        data.val,
        train_config("float", args.float_epochs, 5e-3, 0, args.batch),
        out,
        progress=False,
    )
    return out / LAST


def qat_run(args: argparse.Namespace, data, checkpoint: Path, gap: int, seed: int) -> dict:
    """One QAT run; its test top-1, clips, measured share and epoch time."""
    config = QuantizationConfig(max_range_update_gap=gap)
    q = build_model(
        MODEL, 10, args.input_size, mode="qat", checkpoint=checkpoint, seed=seed, config=config
    )
    started = time.perf_counter()
    result = fit(
        q,
        data.train,
        data.val,
        train_config("qat", args.qat_epochs, 1e-4, seed, args.batch),
        progress=False,
    )
    seconds = (time.perf_counter() - started) / args.qat_epochs
    ranges = activation_ranges(q)
    measured = sum(p._updates for p in ranges) / sum(int(p.num_batches_tracked) for p in ranges)
    top1 = evaluate(q, data.val, train_config("qat", 1, 1e-4, seed, 256), progress=False)["top1"]
    return {
        "gap": gap,
        "seed": seed,
        "top1": top1,
        "last_epoch_val_top1": result.final["val_top1"],
        "clips": [p.clip_range() for p in ranges],
        "measured_share": measured,
        "epoch_seconds": seconds,
    }


def summarise(runs: list[dict]) -> list[str]:
    """Markdown rows: per seed, both gaps side by side, and the clip agreement."""
    rows = [
        "| seed | top-1 gap 1 | top-1 gap 4 | clips equal | batches measured (gap 4) "
        "| QAT epoch s, gap 1 | gap 4 |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["gap"], r["seed"]): r for r in runs}
    for seed in sorted({r["seed"] for r in runs}):
        dense, sparse = by_key[(1, seed)], by_key[(4, seed)]
        equal = sum(a == b for a, b in zip(dense["clips"], sparse["clips"], strict=True))
        rows.append(
            f"| {seed} | {dense['top1']:.2f} | {sparse['top1']:.2f} | "
            f"{equal}/{len(dense['clips'])} | {100 * sparse['measured_share']:.0f} % | "
            f"{dense['epoch_seconds']:.0f} | {sparse['epoch_seconds']:.0f} |"
        )
    for gap in (1, 4):
        values = [r["top1"] for r in runs if r["gap"] == gap]
        rows.append(f"| mean | gap {gap}: {sum(values) / len(values):.2f} | | | | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--float-epochs", type=int, default=4)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/range_update_gap"))
    parser.add_argument("--out", type=Path, default=Path("docs/range_update_gap"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    mean, std = preprocessing(MODEL)
    data = build_task_data("fashion-mnist", "classification", args.input_size, mean, std)
    data = dataclasses.replace(
        data, train=Subset(data.train, range(min(args.train_limit, len(data.train))))
    )
    checkpoint = float_checkpoint(args, data)
    runs = [qat_run(args, data, checkpoint, gap, seed) for seed in args.seeds for gap in (1, 4)]
    host = machine_description()
    lines = [
        f"MobileNetV2, Fashion-MNIST {len(data.train)} train / {len(data.val)} test at "
        f"{args.input_size}x{args.input_size}; float {args.float_epochs} epochs, then QAT "
        f"{args.qat_epochs} epochs (AdamW 1e-4) per run; {host['cpu']}, "
        f"{host['torch_threads']} threads, torch {host['torch']}.",
        "",
        *summarise(runs),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "machine": host,
                "args": vars(args) | {"runs": str(args.runs), "out": str(args.out)},
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
