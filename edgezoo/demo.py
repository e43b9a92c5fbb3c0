"""`edgezoo demo`: the whole job on real data in minutes.

Float training -> PTQ calibration -> QAT -> evaluation of all three -> export of the QAT model to
a verified TIDL ONNX with its config files -> a table, a plot and results.json. Classification
uses mobilenetv2 on the embedded Fashion-MNIST subset; segmentation uses
deeplabv3plus_mobilenetv2 on COMPOSITE scenes built from Fashion-MNIST items.
"""

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgezoo.data import TaskData
from edgezoo.engine import FitResult, TrainConfig, fit
from edgezoo.engine.recipes import default_weight_decay
from edgezoo.engine.run_dir import LAST, check_run_dir, clear_run_dir
from edgezoo.engine.setup import build_model, cached_pretrained
from edgezoo.errors import RunExistsError
from edgezoo.fileio import atomic_path, write_json_atomic
from edgezoo.quantization.modes import CALIBRATE, FLOAT_RUN, QAT_RUN
from edgezoo.registry import preprocessing
from edgezoo.tasks import CLASSIFICATION, DemoDefaults, build_task_data, get_task

logger = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
PLOT_PNG = "accuracy.png"
EXAMPLES_PNG = "examples.png"
STAGES = (FLOAT_RUN, CALIBRATE, QAT_RUN)
"""The demo's stages are the engine's run modes (PTQ is the calibrate run)."""


@dataclass
class DemoOptions:
    """What `edgezoo demo` was asked for; None means the task's default."""

    task: str = CLASSIFICATION
    out_dir: Path = Path("edgezoo-demo")
    float_epochs: int | None = None
    qat_epochs: int | None = None
    calibration_batches: int | None = None
    input_size: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    qat_lr: float | None = None
    full: bool = False
    pretrained: bool | str | None = None
    max_batches: int | None = None
    seed: int = 0
    num_workers: int = 0
    overwrite: bool = False
    progress: bool = True


@dataclass
class DemoResult:
    """The demo's numbers and files."""

    task: str
    model: str
    data: str
    weights: str
    input_size: int
    metric: str
    metrics: dict[str, dict[str, float]]
    histories: dict[str, list[dict[str, Any]]]
    onnx_path: Path
    export_ok: bool
    export_summary: str
    verification_ok: bool
    verification_summary: str
    tidl_files: dict[str, str]
    plot_path: Path
    results_path: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    examples_path: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether the QAT ONNX was written, matched PyTorch and passed verification."""
        return self.export_ok and self.verification_ok

    def table(self) -> str:
        """The demo's report as printed by `edgezoo demo`."""
        task = get_task(self.task)
        unit = task.metric_label
        composite = " [COMPOSITE scenes]" if task.composite_scenes else ""
        rows = [
            (FLOAT_RUN, FLOAT_RUN, "float32"),
            ("PTQ", CALIBRATE, "int8 power-of-two, calibrated"),
            ("QAT", QAT_RUN, "int8 power-of-two, fine-tuned"),
        ]
        lines = [
            f"edgezoo demo: {self.model}, {self.task}{composite}",
            f"  data:    {self.data}",
            f"  weights: {self.weights}",
            f"  input:   {self.input_size}x{self.input_size}",
            "",
            f"  {'model':<6} {'numerics':<32} {unit:>10}  time (s)",
        ]
        for label, stage, numerics in rows:
            figure, seconds = self.metrics[stage][self.metric], self.stage_seconds.get(stage, 0.0)
            lines.append(f"  {label:<6} {numerics:<32} {figure:>10.2f}  {seconds:>8.0f}")
        verdict = "OK" if self.ok else "FAILED"
        lines += [
            "",
            f"  QAT ONNX:     {self.onnx_path}",
            f"  export:       {self.export_summary}",
            f"  verification: {self.verification_summary}",
            f"  TIDL files:   {', '.join(self.tidl_files.values()) or 'none'}",
            f"  plot:         {self.plot_path}",
            *([f"  examples:     {self.examples_path}"] if self.examples_path else []),
            f"  results:      {self.results_path}",
            f"  wall time:    {self.wall_seconds:.0f} s ({verdict})",
        ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """results.json content."""
        return {
            "task": self.task,
            "model": self.model,
            "data": self.data,
            "weights": self.weights,
            "input_size": self.input_size,
            "metric": self.metric,
            "metrics": self.metrics,
            "histories": self.histories,
            "onnx": str(self.onnx_path),
            "export_ok": self.export_ok,
            "export": self.export_summary,
            "verification_ok": self.verification_ok,
            "verification": self.verification_summary,
            "tidl_files": self.tidl_files,
            "plot": str(self.plot_path),
            "examples": None if self.examples_path is None else str(self.examples_path),
            "stage_seconds": self.stage_seconds,
            "wall_seconds": self.wall_seconds,
        }


def _initial_weights(
    model: str, defaults: DemoDefaults, pretrained: bool | str | None
) -> tuple[dict, str]:
    """get_model weight arguments and a sentence saying where the float weights start from."""
    if pretrained is None:
        cached = cached_pretrained(model)
        if cached == "full":
            return (
                {"pretrained": True},
                "torchvision ImageNet weights (found in the torch.hub cache)",
            )
        if cached == "backbone":
            return (
                {"pretrained_backbone": True},
                "torchvision ImageNet weights in the backbone (found in the torch.hub cache)",
            )
        return {}, (
            "from scratch: no torchvision weights in the torch.hub cache "
            "(pass --pretrained to download them)"
        )
    is_file = isinstance(pretrained, str) and os.path.isfile(pretrained)
    if defaults.backbone_weights and not is_file:
        return {"pretrained_backbone": pretrained}, "torchvision ImageNet weights in the backbone"
    return {"pretrained": pretrained}, f"pretrained weights ({pretrained})"


def _stage_dirs(out_dir: Path) -> dict[str, Path]:
    return {stage: out_dir / stage for stage in STAGES}


def _check_out_dir(out_dir: Path, overwrite: bool, model: str) -> None:
    from edgezoo.export.tidl_config import tidl_config_paths

    onnx_path = out_dir / f"{model}_qat.onnx"
    files = [out_dir / name for name in (RESULTS_JSON, PLOT_PNG, EXAMPLES_PNG)]
    files += [onnx_path, *tidl_config_paths(onnx_path)]
    present = [path.name for path in files if path.exists()]
    if present and not overwrite:
        raise RunExistsError(
            f"{out_dir} already holds demo files ({', '.join(present)}); pass --overwrite to "
            "replace them or choose another --out"
        )
    for run_dir in _stage_dirs(out_dir).values():
        check_run_dir(run_dir, resume=False, overwrite=overwrite)


def _final(result: FitResult) -> dict[str, float]:
    return {k.removeprefix("val_"): v for k, v in result.final.items() if k.startswith("val_")}


@dataclass
class _DemoPlan:
    """What the demo runs: its model, data, folders and the settings of each stage."""

    options: DemoOptions
    defaults: DemoDefaults
    data: TaskData
    dirs: dict[str, Path]
    input_size: int
    batch_size: int
    weights_kwargs: dict[str, Any]
    weights_note: str

    @property
    def name(self) -> str:
        return self.defaults.model

    def config(self, mode: str, epochs: int, lr: float, max_batches: int | None) -> TrainConfig:
        """The engine settings of one stage."""
        return TrainConfig(
            task=self.options.task,
            mode=mode,
            num_classes=self.data.num_classes,
            ignore_index=self.data.ignore_index,
            epochs=epochs,
            batch_size=self.batch_size,
            lr=lr,
            optimizer="adamw",
            weight_decay=default_weight_decay("adamw"),
            schedule="cosine",
            warmup_epochs=1 if mode == FLOAT_RUN and epochs > 2 else 0,
            max_batches=max_batches,
            num_workers=self.options.num_workers,
            seed=self.options.seed,
            metadata={
                "model": self.name,
                "data": self.data.description,
                "input_size": self.input_size,
            },
        )

    def stage_configs(self) -> dict[str, TrainConfig]:
        """Float training, PTQ calibration and QAT, with the demo's defaults filled in."""
        options, defaults = self.options, self.defaults
        calibration_batches = options.calibration_batches or defaults.calibration_batches
        if options.max_batches is not None:
            calibration_batches = min(calibration_batches, options.max_batches)
        return {
            FLOAT_RUN: self.config(
                FLOAT_RUN,
                options.float_epochs or defaults.float_epochs,
                options.lr or defaults.lr,
                options.max_batches,
            ),
            CALIBRATE: self.config(CALIBRATE, 1, 0.0, calibration_batches),
            QAT_RUN: self.config(
                QAT_RUN,
                options.qat_epochs or defaults.qat_epochs,
                options.qat_lr or defaults.qat_lr,
                options.max_batches,
            ),
        }


def _plan(options: DemoOptions) -> _DemoPlan:
    """Check and clear the output folders, load the data, decide where the weights start."""
    defaults = get_task(options.task).demo
    out_dir = Path(options.out_dir).expanduser()
    _check_out_dir(out_dir, options.overwrite, defaults.model)
    dirs = {stage: clear_run_dir(path) for stage, path in _stage_dirs(out_dir).items()}
    input_size = options.input_size or defaults.input_size
    mean, std = preprocessing(defaults.model)
    data = build_task_data(
        defaults.full_data if options.full else defaults.data,
        options.task,
        input_size,
        mean,
        std,
        composite_scenes=(None, None) if options.full else defaults.scenes,
    )
    logger.info("demo data: %s", data.description)
    weights_kwargs, weights_note = _initial_weights(defaults.model, defaults, options.pretrained)
    logger.info("demo weights: %s", weights_note)
    return _DemoPlan(
        options,
        defaults,
        data,
        dirs,
        input_size,
        options.batch_size or defaults.batch_size,
        weights_kwargs,
        weights_note,
    )


def _train_stages(plan: _DemoPlan) -> tuple[dict[str, FitResult], dict[str, float], nn.Module]:
    """Float training, then PTQ and QAT from the float checkpoint; the QAT model is returned."""
    configs = plan.stage_configs()
    name, classes, size = plan.name, plan.data.num_classes, plan.input_size
    float_checkpoint = plan.dirs[FLOAT_RUN] / LAST
    builders = {
        FLOAT_RUN: lambda: build_model(
            name, classes, size, seed=plan.options.seed, **plan.weights_kwargs
        ),
        CALIBRATE: lambda: build_model(
            name, classes, size, mode=CALIBRATE, checkpoint=float_checkpoint
        ),
        QAT_RUN: lambda: build_model(
            name, classes, size, mode=QAT_RUN, checkpoint=float_checkpoint
        ),
    }
    results: dict[str, FitResult] = {}
    seconds: dict[str, float] = {}
    model = None
    for stage, build in builders.items():
        clock = time.perf_counter()
        model = build()
        results[stage] = fit(
            model,
            plan.data.train,
            plan.data.val,
            configs[stage],
            plan.dirs[stage],
            progress=plan.options.progress,
        )
        seconds[stage] = time.perf_counter() - clock
    return results, seconds, model


def run_demo(options: DemoOptions) -> DemoResult:
    """Run float training, PTQ, QAT, evaluation, export and verification; write the report."""
    started = time.perf_counter()
    plan = _plan(options)
    out_dir = Path(options.out_dir).expanduser()
    results, seconds, qat = _train_stages(plan)
    clock = time.perf_counter()
    onnx_path = out_dir / f"{plan.name}_qat.onnx"
    mean, std = preprocessing(plan.name)
    export = _export(qat, onnx_path, plan.data, plan.name, mean, std)
    seconds["export"] = time.perf_counter() - clock
    metric = get_task(options.task).primary_metric
    plot_path = out_dir / PLOT_PNG
    write_plot(plot_path, results, metric, plan.name, options.task)
    examples = out_dir / EXAMPLES_PNG
    task = get_task(options.task)
    pictured = task.example_picture(qat, plan.data.val, plan.data.classes, (mean, std), examples)
    result = DemoResult(
        task=options.task,
        model=plan.name,
        data=plan.data.description,
        weights=plan.weights_note,
        input_size=plan.input_size,
        metric=metric,
        metrics={stage: _final(r) for stage, r in results.items()},
        histories={stage: r.history for stage, r in results.items()},
        onnx_path=onnx_path,
        plot_path=plot_path,
        results_path=out_dir / RESULTS_JSON,
        stage_seconds=seconds,
        examples_path=examples if pictured else None,
        **export,
    )
    result.wall_seconds = time.perf_counter() - started
    write_json_atomic(result.results_path, result.to_json())
    return result


def _export(
    qat: torch.nn.Module,
    path: Path,
    data: TaskData,
    name: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> dict[str, Any]:
    """Export the QAT model (with a real validation input for the parity check), then verify
    the written file again from disk."""
    from edgezoo.export import export_onnx, verify_onnx

    example = data.val[0][0][None].to(next(qat.parameters()).device)
    report = export_onnx(
        qat,
        path,
        example_input=example,
        argmax=get_task(data.task).export_argmax,
        strict=False,
        model_name=name,
        task=data.task,
        preprocessing={"mean": list(mean), "std": list(std)},
    )
    parity = "OK" if report.parity_ok else "FAILED"
    export_summary = (
        f"{report.clip_count} Clip ranges, opset {report.opset}; onnxruntime vs PyTorch max rel "
        f"diff {report.parity_max_rel_diff:.2g} ({parity})"
    )
    verification = verify_onnx(path)
    if verification.ok:
        verification_summary = "OK, no TIDL rule violations"
    else:
        verification_summary = (
            f"{len(verification.violations)} TIDL rule violation(s): "
            + "; ".join(str(v) for v in verification.violations[:3])
        )
    return {
        "export_ok": report.ok,
        "export_summary": export_summary,
        "verification_ok": verification.ok,
        "verification_summary": verification_summary,
        "tidl_files": {role: str(p) for role, p in report.config_files.items()},
    }


def write_plot(
    path: Path, results: dict[str, FitResult], metric: str, model: str, task: str
) -> None:
    """Plot validation (solid) and training (dashed) metric per epoch: float epochs, then the
    PTQ point, then the QAT epochs."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.2), dpi=110)
    axes = figure.add_subplot()
    float_history, qat_history = results[FLOAT_RUN].history, results[QAT_RUN].history
    x_float = list(range(1, len(float_history) + 1))
    x_qat = [len(float_history) + e for e in range(1, len(qat_history) + 1)]
    for history, x, label, colour in (
        (float_history, x_float, "float", "tab:blue"),
        (qat_history, x_qat, "QAT", "tab:green"),
    ):
        axes.plot(
            x, [r[f"val_{metric}"] for r in history], "o-", color=colour, label=f"{label} val"
        )
        axes.plot(
            x,
            [r[f"train_{metric}"] for r in history],
            "--",
            color=colour,
            alpha=0.5,
            label=f"{label} train",
        )
    ptq = results[CALIBRATE].final[f"val_{metric}"]
    axes.plot([len(float_history) + 0.5], [ptq], "s", color="tab:orange", label="PTQ val")
    axes.set_xlabel("epoch (float, then QAT)")
    axes.set_ylabel(get_task(task).metric_label)
    kind = " (COMPOSITE scenes)" if get_task(task).composite_scenes else ""
    axes.set_title(f"edgezoo demo: {model}{kind}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png")
