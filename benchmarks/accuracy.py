"""Float vs PTQ vs QAT recipes on converged models, with recipes chosen on a validation split.

Starts from the converged float checkpoints in ../shared/checkpoints (ResNet18, MobileNetV2 on
the full Fashion-MNIST, 32x32) and, for DeepLabV3+ MobileNetV2, a float model it trains itself
on composite scenes (kept in --work, so a resumed run reuses it). For each model: PTQ (bias
calibration), QAT with TI's freeze schedule and two alternatives at two learning rates (chosen
on a validation split of 5000 training images, edgezoo.data.validation_split, never on the test
set), then the chosen recipe with distillation from the float model, with label-free
distillation, and with the other bias rule. Every run reports validation and test figures; the
classifiers' test figures come with McNemar's test against float and against PTQ (paired, the
same 10000 test images), segmentation's with a bootstrap 95 % interval of the mIoU difference
over test scenes. Results go to docs/accuracy.json after every run (a killed run resumes where
it stopped) and docs/accuracy.md; plots to docs/.

    OMP_NUM_THREADS=1 python benchmarks/accuracy.py --models mobilenetv2
    OMP_NUM_THREADS=1 python benchmarks/accuracy.py --models resnet18 deeplabv3plus_mobilenetv2
    python benchmarks/accuracy.py --report-only     # docs/accuracy.md from the json
"""

import argparse
import base64
import copy
import fcntl
import json
import math
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import machine_description
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from edgezoo import get_model
from edgezoo.data import VALIDATION_SIZE
from edgezoo.engine import TrainConfig, fit
from edgezoo.fileio import atomic_path
from edgezoo.quantization import (
    QuantizationConfig,
    layer_report,
    wrap_model,
    write_back_quantized_weights,
)
from edgezoo.registry import preprocessing
from edgezoo.tasks import build_task_data

CLASSIFIERS = ("mobilenetv2", "resnet18")
SEGMENTER = "deeplabv3plus_mobilenetv2"
SCHEDULES = {  # (bn_freeze_epoch, range_freeze_epoch, range_lr) over the QAT sub-epochs
    "ti": (None, None, None),  # None: TI's rule (BN from epochs//2 - 1, ranges from //2 + 1)
    "bn_frozen_from_start": (0, None, None),
    "ranges_frozen_after_first": (None, 1, None),
    # Ranges trained by gradient (TQT; range_lr: their learning rate) under TI's freeze rule.
    "learned_ranges": (None, None, 1e-2),
    "learned_ranges_fast": (None, None, 5e-2),
}
LEARNING_RATES = (1e-4, 1e-5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*CLASSIFIERS, SEGMENTER])
    parser.add_argument("--checkpoints", type=Path, default=Path("../shared/checkpoints"))
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="QAT data-order seeds of PTQ and the chosen recipe (the choice is made on the first)",
    )
    parser.add_argument("--qat-epochs", type=int, default=4, help="QAT sub-epochs")
    parser.add_argument("--qat-batches", type=int, default=25, help="batches per sub-epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ptq-batches", type=int, default=50)
    parser.add_argument("--seg-float-epochs", type=int, default=16)
    parser.add_argument("--seg-scenes", type=int, nargs=2, default=(6000, 1000))
    parser.add_argument("--seg-batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--out", type=Path, default=Path("docs/accuracy.json"))
    parser.add_argument("--report-only", action="store_true")
    return parser.parse_args(argv)


# Data.


def model_data(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train (without the validation split), validation and test sets of a model's task."""
    task = "segmentation" if name == SEGMENTER else "classification"
    mean, std = preprocessing(name)
    size = 64 if task == "segmentation" else 32
    options: dict[str, Any] = {}
    if task == "segmentation":
        options["composite_scenes"] = tuple(args.seg_scenes)
    held_out = VALIDATION_SIZE if task == "classification" else args.seg_scenes[0] // 12
    data = build_task_data(
        "fashion-mnist", task, size, mean, std, validation_split=held_out, **options
    )
    return {"task": task, "size": size, "data": data, "train": data.train, "val": data.val}


# Runs.


def base_config(name: str, sets: dict[str, Any], args: argparse.Namespace) -> TrainConfig:
    segmentation = sets["task"] == "segmentation"
    return TrainConfig(
        task=sets["task"],
        mode="qat",
        num_classes=sets["data"].num_classes,
        ignore_index=sets["data"].ignore_index,
        epochs=args.qat_epochs,
        batch_size=args.seg_batch_size if segmentation else args.batch_size,
        lr=1e-5,
        optimizer="adamw",
        weight_decay=0.0,
        schedule="cosine",
        max_batches=args.qat_batches,
        seed=0,
        metadata={"model": name},
    )


def float_model(name: str, sets: dict[str, Any], args: argparse.Namespace):
    """The converged float model (trained here for segmentation, once, then reused) and, when
    trained in this call, its per-epoch history."""
    num_classes = sets["data"].num_classes
    model = get_model(name, num_classes=num_classes)
    # Trained on the 55000 training images outside the validation split (their README).
    path = args.checkpoints / f"{name}_fashion_mnist_32px_55k.pth"
    history = None
    if sets["task"] == "segmentation":
        path = args.work / f"{name}_float.pth"
        if not path.exists():
            history = train_segmentation_float(model, sets, args, path)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval(), history


def train_segmentation_float(model, sets, args, path: Path) -> list[dict[str, Any]]:
    config = replace(
        base_config(SEGMENTER, sets, args),
        mode="float",
        epochs=args.seg_float_epochs,
        lr=2e-3,
        weight_decay=0.05,
        warmup_epochs=1,
        max_batches=None,
    )
    torch.manual_seed(0)
    result = fit(model, sets["train"], sets["val"], config, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        torch.save(model.state_dict(), partial)
    return result.history


def quantized(
    model: torch.nn.Module, mode: str, sets: dict[str, Any], bias_rule: str | None, learn: bool
):
    example = torch.rand(1, 3, sets["size"], sets["size"])
    config = QuantizationConfig(bias_rule=bias_rule, learn_ranges=learn)
    return wrap_model(copy.deepcopy(model), mode, example, config=config)


def run_recipe(
    float_net, sets, config: TrainConfig, bias_rule: str | None = None, write_back: bool = False
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Calibrate or QAT-train a copy of the float model; the run's figures and the model.
    write_back: first replace the float weights by their quantized values (TI's v1). The
    ranges learn by gradient when the config's metadata says learn_ranges."""
    mode = "calibrate" if config.mode == "calibrate" else "train"
    q = quantized(float_net, mode, sets, bias_rule, config.metadata.get("learn_ranges", False))
    if write_back:
        write_back_quantized_weights(q)
    teacher = float_net if config.distill else None
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    # fit's per-epoch validation (capped by max_batches) only logs; the full split decides.
    monitor = Subset(sets["val"], range(min(256, len(sets["val"]))))
    result = fit(q, sets["train"], monitor, config, progress=False, teacher=teacher)
    seconds = time.perf_counter() - started
    record = {
        "seconds": seconds,
        "images_seen": config.epochs * config.max_batches * config.batch_size,
        "history": result.history,
        "val": evaluate_val(q, sets),
    }
    record.update(test_figures(q, sets))
    return record, q


def predictions(model: torch.nn.Module, dataset, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(predicted classes, targets) of model in eval mode over a dataset."""
    model.eval()
    outputs, targets = [], []
    with torch.no_grad():
        for images, labels in DataLoader(dataset, batch_size=batch_size):
            out = model(images)
            outputs.append((out["out"] if isinstance(out, dict) else out).argmax(1))
            targets.append(labels)
    return torch.cat(outputs), torch.cat(targets)


def test_figures(model: torch.nn.Module, sets: dict[str, Any]) -> dict[str, Any]:
    """Test top-1 with per-image correctness (classification) or mIoU with per-scene
    confusion matrices (segmentation), for the paired tests."""
    predicted, target = predictions(model, sets["data"].test)
    if sets["task"] == "classification":
        correct = (predicted == target).numpy()
        return {"test_top1": 100.0 * correct.mean(), "test_correct": pack(correct)}
    classes = sets["data"].num_classes
    confusions = scene_confusions(predicted, target, classes, sets["data"].ignore_index)
    return {
        "test_miou": 100.0 * miou(confusions.sum(0)),
        "test_confusions": pack_counts(confusions),
    }


def scene_confusions(predicted: Tensor, target: Tensor, classes: int, ignore: int | None):
    kept = target != (ignore if ignore is not None else -1)
    index = target.clamp(0, classes - 1) * classes + predicted
    index = torch.where(kept, index, torch.full_like(index, classes * classes))
    counts = [torch.bincount(i.flatten(), minlength=classes * classes + 1) for i in index]
    return torch.stack(counts)[:, :-1].reshape(-1, classes, classes).numpy()


def miou(confusion: np.ndarray) -> float:
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def pack(correct: np.ndarray) -> str:
    return np.packbits(correct.astype(np.uint8)).tobytes().hex()


def pack_counts(confusions: np.ndarray) -> dict[str, Any]:
    """Per-scene confusion matrices, compactly: uint16 counts (a 64x64 scene has 4096 pixels),
    zlib-compressed and base64-encoded, with their shape."""
    data = zlib.compress(confusions.astype(np.uint16).tobytes(), 9)
    return {"shape": list(confusions.shape), "uint16_zlib_base64": base64.b64encode(data).decode()}


def unpack_counts(packed: dict[str, Any]) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(packed["uint16_zlib_base64"]))
    return np.frombuffer(raw, dtype=np.uint16).reshape(packed["shape"]).astype(np.int64)


def unpack(text: str, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:count].astype(bool)


# Paired significance.


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test of two classifiers on the same images (two-sided p)."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return {"only_first": 0, "only_second": 0, "p": 1.0}
    log_half = n * math.log(0.5)
    tail = sum(math.exp(_log_choose(n, i) + log_half) for i in range(k + 1))
    return {"only_first": only_a, "only_second": only_b, "p": min(1.0, 2.0 * tail)}


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def bootstrap_miou(first: np.ndarray, second: np.ndarray, rounds: int = 1000) -> dict[str, float]:
    """95 % bootstrap interval (over scenes) of mIoU(first) - mIoU(second)."""
    rng = np.random.default_rng(0)
    scenes = first.shape[0]
    diffs = []
    for _ in range(rounds):
        pick = rng.integers(0, scenes, scenes)
        diffs.append(miou(first[pick].sum(0)) - miou(second[pick].sum(0)))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"low": 100.0 * float(low), "high": 100.0 * float(high)}


# The experiment.


class Results:
    """docs/accuracy.json: every finished run by model and run name, saved after each."""

    def __init__(self, path: Path, lock: Path, describe=None) -> None:
        self.path, self.lock = path, lock
        self.describe = describe or summary
        self.data = json.loads(path.read_text()) if path.exists() else {"models": {}}

    def get(self, model: str, run: str) -> dict[str, Any] | None:
        return self.data["models"].get(model, {}).get(run)

    def put(self, model: str, run: str, record: dict[str, Any]) -> None:
        """Add a run and save, merging what other processes (other models) saved meanwhile."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                self.data = json.loads(self.path.read_text())
            self.data["models"].setdefault(model, {})[run] = record
            self.data.setdefault("machines", {})[model] = machine_description()
            with atomic_path(self.path) as partial:
                partial.write_text(json.dumps(self.data, indent=1))
        print(f"{model} {run}: {self.describe(record)}", flush=True)


def summary(record: dict[str, Any]) -> str:
    metric = "test_top1" if "test_top1" in record else "test_miou"
    val = record.get("val", {})
    val_figure = val.get("top1", val.get("miou"))
    return f"val {val_figure}, {metric} {record[metric]:.2f}, {record.get('seconds', 0):.0f} s"


def measure(name: str, args: argparse.Namespace, results: Results) -> None:
    sets = model_data(name, args)
    float_net, history = float_model(name, sets, args)
    base = base_config(name, sets, args)
    if results.get(name, "float") is None:
        record = {"val": evaluate_val(float_net, sets), **test_figures(float_net, sets)}
        if history is not None:
            record["training_history"] = history
        results.put(name, "float", record)
    for seed in args.seeds:
        run = seeded("ptq", seed)
        if results.get(name, run) is None:
            calibrate = replace(
                base, mode="calibrate", epochs=1, max_batches=args.ptq_batches, seed=seed
            )
            record, ptq = run_recipe(float_net, sets, calibrate)
            record["layers"] = layer_figures(ptq, sets)
            results.put(name, run, record)
    for schedule in SCHEDULES:
        for lr in LEARNING_RATES:
            run = f"qat_{schedule}_lr{lr:g}"
            if results.get(name, run) is None:
                config = recipe_config(base, schedule, lr)
                results.put(name, run, run_recipe(float_net, sets, config)[0])
    chosen = choose(results.data["models"][name])
    best = recipe_config(base, chosen["schedule"], chosen["lr"])
    variants = {
        "qat_chosen": (best, None, False),
        "qat_chosen_distill": (replace(best, distill=True), None, False),
        "qat_chosen_distill_no_labels": (replace(best, distill=True, labels=False), None, False),
        "qat_chosen_bias_joint": (best, "joint", False),
        "qat_chosen_weights_written_back": (best, None, True),
    }
    recipe = {"schedule": chosen["schedule"], "lr": chosen["lr"]}
    for variant, (config, bias_rule, write_back) in variants.items():
        for seed in args.seeds if variant in SEEDED_VARIANTS else args.seeds[:1]:
            run = seeded(variant, seed)
            done = results.get(name, run)
            if done is not None and done.get("recipe") == recipe:
                continue
            if run == "qat_chosen":  # seed 0 of the chosen recipe is the run it was chosen by
                chosen_run = f"qat_{chosen['schedule']}_lr{chosen['lr']:g}"
                results.put(name, run, {**results.get(name, chosen_run), "recipe": recipe})
                continue
            record, q = run_recipe(
                float_net, sets, replace(config, seed=seed), bias_rule, write_back
            )
            record["recipe"] = recipe
            if run == "qat_chosen_distill":
                record["layers"] = layer_figures(q, sets)
            results.put(name, run, record)


def recipe_config(base: TrainConfig, schedule: str, lr: float) -> TrainConfig:
    """The QAT run of one schedule (SCHEDULES) at one learning rate."""
    bn, ranges, range_lr = SCHEDULES[schedule]
    config = replace(base, lr=lr, bn_freeze_epoch=bn, range_freeze_epoch=ranges)
    if range_lr is None:
        return config
    metadata = {**base.metadata, "learn_ranges": True}
    return replace(config, range_lr=range_lr, metadata=metadata)


SEEDED_VARIANTS = ("qat_chosen", "qat_chosen_distill")
"""The chosen recipe's variants run on every seed (the others on the first only)."""


def seeded(run: str, seed: int) -> str:
    """A run's name in the json: the plain name for seed 0, else suffixed with its seed."""
    return run if seed == 0 else f"{run}_seed{seed}"


def evaluate_val(model: torch.nn.Module, sets: dict[str, Any]) -> dict[str, float]:
    predicted, target = predictions(model, sets["val"])
    if sets["task"] == "classification":
        return {"top1": 100.0 * float((predicted == target).double().mean())}
    classes = sets["data"].num_classes
    confusions = scene_confusions(predicted, target, classes, sets["data"].ignore_index)
    return {"miou": 100.0 * miou(confusions.sum(0))}


def layer_figures(q: torch.nn.Module, sets: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-layer SQNR (layer_report) on two fixed test batches."""
    loader = DataLoader(sets["data"].test, batch_size=64)
    report = layer_report(q, loader, max_batches=2)
    return [{"layer": layer.name, "sqnr_db": layer.sqnr_db} for layer in report.layers]


def choose(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The QAT schedule and learning rate with the best validation figure (ties: first)."""
    best = None
    for schedule in SCHEDULES:
        for lr in LEARNING_RATES:
            record = runs[f"qat_{schedule}_lr{lr:g}"]
            figure = record["val"].get("top1", record["val"].get("miou"))
            if best is None or figure > best["val"]:
                best = {"schedule": schedule, "lr": lr, "val": figure}
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results(args.out, args.work / "results.lock")
    if not args.report_only:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        for name in args.models:
            measure(name, args, results)
    from accuracy_report import write_report  # benchmarks/ is not a package

    write_report(results.data, args.out.with_suffix(".md"), args.out.parent)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
