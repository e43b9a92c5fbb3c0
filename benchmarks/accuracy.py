"""Measured accuracy of float, PTQ and QAT models on real data, with edgezoo's own engine.

For each classifier (full Fashion-MNIST from the Debian package, 60000 train / 10000 test) and
for deeplabv3plus_mobilenetv2 (COMPOSITE segmentation scenes built from Fashion-MNIST items):

1. float training from scratch (no pretrained weights can be downloaded on this machine),
2. a float control: the float checkpoint trained on for as many epochs as QAT, with QAT's
   optimiser and learning rate, so QAT's extra training is not mistaken for recovery,
3. PTQ: QuantCalibrateModule over a fixed subset of the training set, from the float
   checkpoint and from the control checkpoint,
4. QAT: QuantTrainModule from the float checkpoint with TI's freeze schedule,
5. QAT again, measured by QuantTestModule from the QAT run's saved last.pth,

all at 8-bit power-of-two per-tensor quantization, plus the 16-bit-activation setting on the
models named by --act16-models (PTQ and QAT from the same float checkpoints). Every stage runs
through edgezoo.engine.fit / evaluate. The reported figures are the final epoch's (last.pth):
no checkpoint or setting is chosen by its test-set result.

Writes accuracy.json, a results section of accuracy.md (text outside the markers is kept), and
PNG plots (metric per epoch; per-layer SQNR of the PTQ and the QAT model from layer_report).

    python benchmarks/accuracy.py --epochs-float 2 --epochs-qat 2 --train-limit 30000
    python benchmarks/accuracy.py --train-limit 512 --val-limit 256 --epochs-float 1 \
        --epochs-qat 1 --docs build/accuracy-quick                    # a quick check
"""

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from edgezoo.benchmarking import machine_description
from edgezoo.data import TaskData, build_task_data
from edgezoo.engine import LAST, TrainConfig, evaluate, fit, primary_metric
from edgezoo.engine.checkpoint import clear_run_dir, write_json_atomic, write_text_atomic
from edgezoo.engine.recipes import default_lr, default_weight_decay
from edgezoo.engine.setup import build_model, model_task, preprocessing
from edgezoo.quantization import LayerReport, layer_report, wrap_model
from edgezoo.registry import get_model
from edgezoo.weights import load_weights

logger = logging.getLogger("benchmarks.accuracy")

MARK_BEGIN = "<!-- accuracy.py results: begin (generated, do not edit) -->"
MARK_END = "<!-- accuracy.py results: end -->"
STAGES = ("float", "float_control", "ptq", "ptq_control", "qat", "qat_checkpoint")
TRAINED_STAGES = ("float", "float_control", "ptq", "ptq_control", "qat")
GOAL = {"classification": 0.3, "segmentation": 0.5}


@dataclass(frozen=True)
class Budget:
    """The compute budget of a run: epochs, input sizes and how much data each stage sees."""

    epochs_float: int
    epochs_qat: int
    input_size: int
    seg_input_size: int
    batch_size: int
    seg_batch_size: int
    calibration_batches: int
    seg_scenes: tuple[int, int]
    train_limit: int | None
    val_limit: int | None
    seed: int


@dataclass(frozen=True)
class Experiment:
    """One row of the table: a model at an activation bitwidth."""

    model: str
    bitwidth_activations: int = 8

    @property
    def key(self) -> str:
        """A file-name-safe identifier."""
        return self.model if self.bitwidth_activations == 8 else f"{self.model}_a16"


def fixed_subset(dataset: Dataset, count: int | None, seed: int) -> Dataset:
    """The first `count` items of a seeded permutation (the whole set when count is None)."""
    if count is None or count >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(len(dataset), generator=generator)[:count].tolist())


def task_data(task: str, model: str, budget: Budget) -> TaskData:
    """Full Fashion-MNIST (classification) or composite scenes of its items (segmentation)."""
    mean, std = preprocessing(model)
    if task == "classification":
        return build_task_data("fashion-mnist", task, budget.input_size, mean, std)
    return build_task_data(
        "fashion-mnist",
        task,
        budget.seg_input_size,
        mean,
        std,
        composite_scenes=budget.seg_scenes,
    )


def quantized_model(
    name: str,
    num_classes: int,
    input_size: int,
    mode: str,
    checkpoint: Path,
    bitwidth_activations: int,
) -> nn.Module:
    """A quantization wrapper at the given activation bitwidth, loaded from a checkpoint.

    engine.setup.build_model wraps at the default 8 bits only, so the 16-bit setting is built
    here; mode "calibrate" / "train" start from a float checkpoint, "test" loads a quantized
    one (weights and range buffers) strictly.
    """
    model = get_model(name, num_classes=num_classes)
    if mode != "test":
        load_weights(model, checkpoint, strict=True)
    example = torch.rand(1, 3, input_size, input_size)
    wrapped = wrap_model(model, mode, example, bitwidth_activations=bitwidth_activations)
    if mode == "test":
        load_weights(wrapped.module, checkpoint, strict=True)
    return wrapped


def report_batches(dataset: Dataset, batch_size: int, batches: int) -> list[torch.Tensor]:
    """A few fixed validation batches for layer_report."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    inputs = []
    for images, _ in loader:
        inputs.append(images)
        if len(inputs) == batches:
            break
    return inputs


def layer_rows(before: LayerReport, after: LayerReport) -> list[dict[str, Any]]:
    """Per-layer figures of the PTQ (before QAT) and QAT (after) models, side by side."""
    rows = []
    for ptq, qat in zip(before.layers, after.layers, strict=True):
        rows.append(
            {
                "layer": qat.name,
                "type": qat.layer_type,
                "weight_clip": qat.weight_clip,
                "output_clip_ptq": ptq.output_clip,
                "output_clip_qat": qat.output_clip,
                "sqnr_ptq_db": ptq.sqnr_db,
                "sqnr_qat_db": qat.sqnr_db,
            }
        )
    return rows


def final_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The validation metrics of the last epoch of a run."""
    return {k.removeprefix("val_"): v for k, v in history[-1].items() if k.startswith("val_")}


def run_experiment(
    experiment: Experiment,
    budget: Budget,
    work_dir: Path,
    float_from: dict[str, Any] | None,
    progress: bool,
) -> dict[str, Any]:
    """Float and its control (unless float_from gives them), PTQ of both, QAT, QAT from last.pth."""
    name, bits = experiment.model, experiment.bitwidth_activations
    task = model_task(name)
    data = task_data(task, name, budget)
    input_size = budget.input_size if task == "classification" else budget.seg_input_size
    batch_size = budget.batch_size if task == "classification" else budget.seg_batch_size
    train_set = fixed_subset(data.train, budget.train_limit, budget.seed)
    val_set = fixed_subset(data.val, budget.val_limit, budget.seed)
    calibration_set = fixed_subset(
        data.train, min(len(train_set), budget.calibration_batches * batch_size), budget.seed + 1
    )
    metric = primary_metric(task)
    dirs = {stage: clear_run_dir(work_dir / experiment.key / stage) for stage in TRAINED_STAGES}
    logger.info("%s (%d-bit activations): %s", name, bits, data.description)

    def config(mode: str, epochs: int, lr: float | None = None) -> TrainConfig:
        return TrainConfig(
            task=task,
            mode=mode,
            num_classes=data.num_classes,
            ignore_index=data.ignore_index,
            epochs=epochs,
            batch_size=batch_size,
            lr=default_lr(mode, "adamw") if lr is None else lr,
            optimizer="adamw",
            weight_decay=default_weight_decay("adamw"),
            schedule="cosine",
            warmup_epochs=1 if mode == "float" and epochs > 2 else 0,
            seed=budget.seed,
            metadata={"model": name, "data": data.description, "input_size": input_size},
        )

    seconds: dict[str, float] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    if float_from is None:
        torch.manual_seed(budget.seed)
        clock = time.perf_counter()
        model = build_model(name, data.num_classes, input_size)
        result = fit(
            model,
            train_set,
            val_set,
            config("float", budget.epochs_float),
            dirs["float"],
            progress=progress,
        )
        seconds["float"] = time.perf_counter() - clock
        histories["float"] = result.history
        float_checkpoint = dirs["float"] / LAST

        # The control: float training continued exactly as long as QAT, with QAT's optimiser
        # and learning rate, so QAT's extra epochs are not mistaken for recovered accuracy.
        clock = time.perf_counter()
        control = build_model(name, data.num_classes, input_size, checkpoint=float_checkpoint)
        qat_lr = default_lr("qat", "adamw")
        result = fit(
            control,
            train_set,
            val_set,
            config("float", budget.epochs_qat, qat_lr),
            dirs["float_control"],
            progress=progress,
        )
        seconds["float_control"] = time.perf_counter() - clock
        histories["float_control"] = result.history
    else:
        for stage in ("float", "float_control"):
            histories[stage] = float_from["histories"][stage]
            seconds[stage] = 0.0
        float_checkpoint = Path(float_from["float_checkpoint"])
    control_checkpoint = (
        dirs["float_control"] / LAST
        if float_from is None
        else Path(float_from["control_checkpoint"])
    )

    def wrapped(mode: str, checkpoint: Path) -> nn.Module:
        return quantized_model(name, data.num_classes, input_size, mode, checkpoint, bits)

    # PTQ of the float model, and of the control, which trained as long as QAT does: QAT is
    # compared with the latter when asking what quantization itself costs.
    for stage, source in (("ptq", float_checkpoint), ("ptq_control", control_checkpoint)):
        clock = time.perf_counter()
        calibrated = wrapped("calibrate", source)
        calibration = config("calibrate", 1)
        result = fit(
            calibrated, calibration_set, val_set, calibration, dirs[stage], progress=progress
        )
        seconds[stage] = time.perf_counter() - clock
        histories[stage] = result.history

    clock = time.perf_counter()
    qat = wrapped("train", float_checkpoint)
    result = fit(
        qat, train_set, val_set, config("qat", budget.epochs_qat), dirs["qat"], progress=progress
    )
    seconds["qat"] = time.perf_counter() - clock
    histories["qat"] = result.history

    clock = time.perf_counter()
    tested = wrapped("test", dirs["qat"] / LAST)
    checkpoint_metrics = evaluate(tested, val_set, config("qat", 1), progress=progress)
    seconds["qat_checkpoint"] = time.perf_counter() - clock

    samples = report_batches(val_set, batch_size, 4)
    ptq_report = layer_report(wrapped("test", dirs["ptq"] / LAST), samples)
    qat_report = layer_report(tested, samples)
    metrics = {
        "float": final_metrics(histories["float"]),
        "float_control": final_metrics(histories["float_control"]),
        "ptq": final_metrics(histories["ptq"]),
        "ptq_control": final_metrics(histories["ptq_control"]),
        "qat": final_metrics(histories["qat"]),
        "qat_checkpoint": checkpoint_metrics,
    }
    logger.info(
        "%s a%d %s: float %.2f, control %.2f, PTQ %.2f, PTQ control %.2f, QAT %.2f, QAT ckpt %.2f",
        name,
        bits,
        metric,
        *(metrics[stage][metric] for stage in STAGES),
    )
    return {
        "key": experiment.key,
        "model": name,
        "task": task,
        "data": data.description,
        "train_items": len(train_set),
        "val_items": len(val_set),
        "calibration_items": len(calibration_set),
        "input_size": input_size,
        "batch_size": batch_size,
        "bitwidth_weights": 8,
        "bitwidth_activations": bits,
        "metric": metric,
        "metrics": metrics,
        "histories": histories,
        "seconds": seconds,
        "float_checkpoint": str(float_checkpoint),
        "control_checkpoint": str(control_checkpoint),
        "output_sqnr_db": {"ptq": ptq_report.output_sqnr_db, "qat": qat_report.output_sqnr_db},
        "layers": layer_rows(ptq_report, qat_report),
    }


def plot_accuracy(path: Path, record: dict[str, Any]) -> None:
    """Validation (solid) and training (dashed) metric per epoch: float, then PTQ, then QAT."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metric, histories = record["metric"], record["histories"]
    figure = Figure(figsize=(7, 4.2), dpi=110)
    axes = figure.add_subplot()
    epochs_float = len(histories["float"])
    after_float = [epochs_float + e for e in range(1, len(histories["qat"]) + 1)]
    series = (
        ("float", "float", list(range(1, epochs_float + 1)), "tab:blue"),
        ("float_control", "float control", after_float, "tab:gray"),
        ("qat", "QAT", after_float, "tab:green"),
    )
    for stage, label, x, colour in series:
        history = histories[stage]
        val = [r[f"val_{metric}"] for r in history]
        train = [r[f"train_{metric}"] for r in history]
        axes.plot(x, val, "o-", color=colour, label=f"{label} test")
        axes.plot(x, train, "--", color=colour, alpha=0.5, label=f"{label} train")
    ptq = record["metrics"]["ptq"][metric]
    axes.plot([epochs_float + 0.5], [ptq], "s", color="tab:orange", label="PTQ of float test")
    ptq_control = record["metrics"]["ptq_control"][metric]
    axes.plot([after_float[-1] + 0.5], [ptq_control], "D", color="tab:red", label="PTQ of control")
    axes.set_xlabel("epoch (float, then QAT and the float control from the float checkpoint)")
    axes.set_ylabel("top-1 accuracy (%)" if metric == "top1" else "mIoU (%)")
    composite = ", COMPOSITE scenes" if record["task"] == "segmentation" else ""
    bits = record["bitwidth_activations"]
    axes.set_title(f"{record['model']} (w8 a{bits} power-of-two{composite})")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")


def plot_sqnr(path: Path, record: dict[str, Any]) -> None:
    """Per-layer SQNR of the PTQ model (before QAT) and of the QAT model, in layer order."""
    from matplotlib.figure import Figure

    layers = record["layers"]
    figure = Figure(figsize=(9, 4.2), dpi=110)
    axes = figure.add_subplot()
    x = list(range(len(layers)))
    axes.plot(x, [r["sqnr_ptq_db"] for r in layers], "s-", ms=3, color="tab:orange", label="PTQ")
    axes.plot(x, [r["sqnr_qat_db"] for r in layers], "o-", ms=3, color="tab:green", label="QAT")
    axes.set_xlabel("conv / linear layer (network order)")
    axes.set_ylabel("output SQNR vs float reference (dB)")
    bits = record["bitwidth_activations"]
    axes.set_title(f"{record['model']} (w8 a{bits}): per-layer SQNR before and after QAT")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def results_markdown(run: dict[str, Any]) -> str:
    """The generated section of accuracy.md: table, budget, provenance, worst layers, plots."""
    budget, host = run["budget"], run["machine"]
    lines = [
        MARK_BEGIN,
        "",
        f"Measured {run['date']} on {host['cpu']} ({host['cores']} cores shared with other "
        f"jobs, torch {host['torch']}, {host['torch_threads']} thread(s)); wall time "
        f"{run['wall_seconds'] / 60:.1f} min.",
        "",
        "```",
        run["command"],
        "```",
        "",
        f"| model | data | numerics | metric | float | float control (+{budget['epochs_qat']} "
        "epochs) | PTQ of float | PTQ of control | QAT | QAT (QuantTestModule, last.pth) | "
        "QAT - control | QAT - PTQ of control | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in run["experiments"]:
        metric = record["metric"]
        values = {stage: record["metrics"][stage][metric] for stage in STAGES}
        # QAT trains for epochs_qat more epochs than the float model: compare it with the float
        # control that trained as long, not with the shorter float run.
        gap = values["qat_checkpoint"] - values["float_control"]
        goal = GOAL[record["task"]]
        ptq_gap = values["qat_checkpoint"] - values["ptq_control"]
        met = gap >= -goal and ptq_gap > 0
        data = "COMPOSITE seg." if record["task"] == "segmentation" else "Fashion-MNIST"
        unit = "top-1 %" if metric == "top1" else "mIoU %"
        lines.append(
            f"| {record['model']} | {data} | w8 a{record['bitwidth_activations']} po2 "
            f"per-tensor | {unit} | {_fmt(values['float'])} | {_fmt(values['float_control'])} | "
            f"{_fmt(values['ptq'])} | {_fmt(values['ptq_control'])} | "
            f"{_fmt(values['qat'])} | {_fmt(values['qat_checkpoint'])} | {gap:+.2f} | "
            f"{ptq_gap:+.2f} | "
            f"{'met' if met else 'missed'} (within {goal} of control, above PTQ) |"
        )
    lines += [
        "",
        "Budget (every figure above is the final epoch's, on the full test split unless noted):",
        "",
        f"- classifiers: input {budget['input_size']}x{budget['input_size']}, batch "
        f"{budget['batch_size']}; segmentation: input {budget['seg_input_size']}, batch "
        f"{budget['seg_batch_size']}, {budget['seg_scenes'][0]} train / "
        f"{budget['seg_scenes'][1]} val composite scenes",
        f"- float: {budget['epochs_float']} epochs from scratch, AdamW "
        f"{default_lr('float', 'adamw'):g}, cosine; QAT: {budget['epochs_qat']} epochs from the "
        f"float checkpoint, AdamW {default_lr('qat', 'adamw'):g}, cosine, TI freeze schedule "
        "(BN frozen from epoch epochs//2 - 1, ranges from epochs//2 + 1); float control: the "
        "same epochs, optimiser and learning rate from the float checkpoint, without "
        "quantization",
        "- PTQ (of the float model and of the control): QuantCalibrateModule, one pass over "
        f"{budget['calibration_batches']} training "
        "batches (a fixed seeded subset), bias calibration on",
        f"- training items per epoch: {budget['train_limit'] or 'all'}; test items: "
        f"{budget['val_limit'] or 'all'}; seed {budget['seed']}",
        "",
    ]
    for record in run["experiments"]:
        seconds = record["seconds"]
        lines += [
            f"### {record['model']}, w8 a{record['bitwidth_activations']}",
            "",
            f"Data: {record['data']}; {record['train_items']} training items per epoch, "
            f"{record['calibration_items']} calibration items, {record['val_items']} test items. "
            "Stage times: "
            + ", ".join(f"{stage} {seconds[stage]:.0f} s" for stage in STAGES)
            + ".",
            "",
            f"Model output SQNR: PTQ {record['output_sqnr_db']['ptq']:.1f} dB, QAT "
            f"{record['output_sqnr_db']['qat']:.1f} dB. Layers with the lowest SQNR after QAT "
            "(layer_report on 4 test batches; cumulative: a layer's figure includes its inputs' "
            "error):",
            "",
            "| layer | type | weight clip | out clip PTQ | out clip QAT | SQNR PTQ dB | "
            "SQNR QAT dB |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in sorted(record["layers"], key=lambda r: r["sqnr_qat_db"])[:5]:
            lines.append(
                f"| {row['layer']} | {row['type']} | {row['weight_clip']:g} | "
                f"{_clip(row['output_clip_ptq'])} | {_clip(row['output_clip_qat'])} | "
                f"{row['sqnr_ptq_db']:.1f} | {row['sqnr_qat_db']:.1f} |"
            )
        lines += [
            "",
            f"![{record['key']} accuracy per epoch](accuracy_{record['key']}.png)",
            f"![{record['key']} per-layer SQNR](sqnr_{record['key']}.png)",
            "",
        ]
    lines.append(MARK_END)
    return "\n".join(lines)


def _clip(values: list[float] | tuple[float, float] | None) -> str:
    return "-" if values is None else f"({values[0]:g}, {values[1]:g})"


def write_markdown(path: Path, section: str) -> None:
    """Replace the generated section of path, keeping any text written around it."""
    text = path.read_text() if path.exists() else "# Measured accuracy\n\n"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        tail = rest.split(MARK_END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(path, text)


def experiments(models: list[str], act16_models: list[str]) -> list[Experiment]:
    """The 8-bit runs of every model, then the 16-bit-activation runs."""
    unknown = sorted(set(act16_models) - set(models))
    if unknown:
        raise SystemExit(f"--act16-models {unknown} must also be in --models (it reuses float)")
    return [Experiment(m) for m in models] + [Experiment(m, 16) for m in act16_models]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags: the budget and where results go."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["mobilenetv2", "resnet18", "deeplabv3plus_mobilenetv2"],
    )
    parser.add_argument("--act16-models", nargs="*", default=["mobilenetv2"])
    parser.add_argument("--epochs-float", type=int, default=3)
    parser.add_argument("--epochs-qat", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=32, help="classifiers (default 32)")
    parser.add_argument("--seg-input-size", type=int, default=64, help="segmentation")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seg-batch-size", type=int, default=32)
    parser.add_argument("--calibration-batches", type=int, default=50)
    parser.add_argument(
        "--seg-scenes", type=int, nargs=2, default=[4000, 1000], metavar=("TRAIN", "VAL")
    )
    parser.add_argument("--train-limit", type=int, help="training items per epoch (quick runs)")
    parser.add_argument("--val-limit", type=int, help="test items (quick runs only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a loaded 2-core machine one thread trains 3x faster)",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("build/accuracy"))
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="where results go")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every experiment and write the JSON, the markdown section and the plots."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    budget = Budget(
        epochs_float=args.epochs_float,
        epochs_qat=args.epochs_qat,
        input_size=args.input_size,
        seg_input_size=args.seg_input_size,
        batch_size=args.batch_size,
        seg_batch_size=args.seg_batch_size,
        calibration_batches=args.calibration_batches,
        seg_scenes=tuple(args.seg_scenes),
        train_limit=args.train_limit,
        val_limit=args.val_limit,
        seed=args.seed,
    )
    run: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),  # after set_num_threads, so the thread count is the run's
        "budget": budget.__dict__,
        "experiments": [],
    }
    args.docs.mkdir(parents=True, exist_ok=True)
    floats: dict[str, dict[str, Any]] = {}
    for experiment in experiments(args.models, args.act16_models):
        record = run_experiment(
            experiment,
            budget,
            args.work_dir,
            floats.get(experiment.model) if experiment.bitwidth_activations != 8 else None,
            not args.no_progress,
        )
        floats.setdefault(experiment.model, record)
        run["experiments"].append(record)
        plot_accuracy(args.docs / f"accuracy_{experiment.key}.png", record)
        plot_sqnr(args.docs / f"sqnr_{experiment.key}.png", record)
        run["wall_seconds"] = time.perf_counter() - started
        # Written after every experiment, so an interrupted run keeps what it finished.
        write_json_atomic(args.docs / "accuracy.json", run)
        write_markdown(args.docs / "accuracy.md", results_markdown(run))
    print(json.dumps({r["key"]: r["metrics"] for r in run["experiments"]}, indent=2))
    print(f"wall time {run['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
