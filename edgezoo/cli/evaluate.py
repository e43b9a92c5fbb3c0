"""`edgezoo evaluate`: a float, calibrated or QAT checkpoint on the validation split, and its
exported graph in TIDL's integer arithmetic beside it."""

import argparse
from pathlib import Path
from typing import Any

from edgezoo.cli.arguments import output_dir, quantization_config
from edgezoo.cli.run_arguments import (
    add_common_arguments,
    or_default,
    print_metrics,
    run_input_size,
    task_data,
    weights_source,
)
from edgezoo.errors import RunExistsError, UsageError
from edgezoo.quantization.modes import FLOAT_RUN, TEST


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the evaluate subcommand."""
    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate a float, calibrated or QAT checkpoint",
        description=(
            "Evaluate on the validation split: top-1 / top-5 / loss (classification) or mIoU / "
            "pixel accuracy / loss (segmentation). A checkpoint with ranges (QAT or calibrated) "
            "is evaluated quantized; one without ranges cannot be (use it in float)."
        ),
    )
    add_common_arguments(evaluate)
    evaluate.add_argument(
        "--qat",
        action="store_true",
        help="evaluate quantized (implied by a QAT or calibrated checkpoint)",
    )
    evaluate.add_argument("--out", type=output_dir, help="also write the metrics to OUT/eval.json")
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace an eval.json already in --out"
    )
    evaluate.add_argument("--onnx", type=Path, help="the exported QAT graph of this model")
    evaluate.add_argument(
        "--simulate",
        action="store_true",
        help="with --onnx: also evaluate the graph in TIDL's integer arithmetic "
        "(edgezoo.simulate_tidl), beside the PyTorch model",
    )
    evaluate.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate one model on the validation split and print (and optionally save) its metrics."""
    from edgezoo.engine import TrainConfig, evaluate, setup_distributed
    from edgezoo.engine.setup import build_model, is_quantized_state, model_task
    from edgezoo.fileio import write_json_atomic
    from edgezoo.registry import resolve_name
    from edgezoo.weights import read_state_dict

    name = resolve_name(args.model)
    task = model_task(name)
    if args.onnx is not None and not args.simulate:
        raise UsageError("--onnx is read by --simulate: add --simulate, or drop --onnx")
    if args.out is not None and (args.out / "eval.json").exists() and not args.overwrite:
        raise RunExistsError(
            f"{args.out / 'eval.json'} already exists; pass --overwrite to replace it or choose "
            "another --out"
        )
    ctx = setup_distributed(args.device)
    data_name = or_default(args.data, "embedded")
    input_size = run_input_size(args, task, data_name)
    data = task_data(name, task, data_name, input_size, args.num_classes)
    if args.simulate:
        _check_graph_model(args.onnx, name)
    quantized = args.qat
    if args.checkpoint is not None and not quantized:
        quantized = is_quantized_state(name, read_state_dict(args.checkpoint), data.num_classes)
    model = build_model(
        name,
        data.num_classes,
        input_size,
        mode=TEST if quantized else FLOAT_RUN,
        config=quantization_config(args),
        **weights_source(args),
    )
    config = TrainConfig(
        task=task,
        num_classes=data.num_classes,
        ignore_index=data.ignore_index,
        batch_size=or_default(args.batch_size, 64),
        max_batches=args.max_batches,
        num_workers=args.num_workers,
        device=args.device,
    )
    metrics = evaluate(model, data.val, config, ctx, progress=not args.no_progress)
    if not ctx.is_main:
        return 0
    kind = "quantized" if quantized else "float"
    print_metrics(f"{name} ({kind}) on {data.description}", metrics)
    record = {"model": name, "quantized": quantized, "data": data.description, **metrics}
    if args.simulate:
        record["integer_simulation"] = _simulated(args, data, config)
        print_metrics(f"{args.onnx} in TIDL's integer arithmetic", record["integer_simulation"])
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "eval.json", record)
    return 0


def _check_graph_model(path: Path | None, model: str) -> None:
    """Refuse a missing --onnx, or an edgezoo export of another model than the one evaluated."""
    from edgezoo.cli.simulate import check_runnable_graph
    from edgezoo.onnxgraph import load_onnx

    if path is None:
        raise UsageError("--simulate evaluates the exported graph: pass --onnx FILE.onnx too")
    proto = load_onnx(path)
    check_runnable_graph(proto, path)
    if proto.producer_name == "edgezoo" and proto.graph.name not in ("", model):
        raise UsageError(
            f"{path} is an export of {proto.graph.name}, not of {model}: pass the graph "
            f"exported from this {model} checkpoint"
        )


def _simulated(args: argparse.Namespace, data: Any, config: Any) -> dict[str, float]:
    """The --onnx graph's metrics in TIDL's integer arithmetic."""
    from edgezoo.engine import simulated_metrics

    return simulated_metrics(
        args.onnx,
        data.val,
        config.task,
        config.num_classes,
        batch_size=config.batch_size,
        max_batches=config.max_batches,
        ignore_index=config.ignore_index,
        progress=not args.no_progress,
    )
