"""`edgezoo train | calibrate | evaluate | demo`: fine-tune, PTQ-calibrate, QAT and evaluate
from the shell, on one process or under torchrun."""

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_DATA_HELP = (
    "'embedded' (the Fashion-MNIST subset shipped with edgezoo), 'fashion-mnist' (the full set "
    "at /usr/share/datasets/fashion-mnist), 'composite' (COMPOSITE segmentation scenes of "
    "Fashion-MNIST items), or a directory: Fashion-MNIST idx files, or train/ and val/ "
    "sub-folders (classification: one folder per class; segmentation: images/ + masks/)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the train, calibrate, evaluate and demo subcommands."""
    train = subparsers.add_parser(
        "train",
        help="fine-tune a model in float or with QAT (--qat)",
        description=(
            "Train in float, or quantization-aware (--qat) from a float --checkpoint or "
            "--pretrained weights. Writes last.pth / best.pth every epoch (atomically) and "
            "metrics.csv / metrics.json to --out. Runs under torchrun unchanged."
        ),
    )
    _add_run_arguments(train, epochs=10)
    train.add_argument(
        "--qat", action="store_true", help="quantization-aware training (QuantTrainModule)"
    )
    train.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw")
    train.add_argument(
        "--schedule",
        choices=("cosine", "step", "constant"),
        default="cosine",
        help="per-epoch learning-rate schedule (default cosine)",
    )
    train.add_argument(
        "--weight-decay", type=float, default=None, help="default: 0.05 AdamW, 4e-5 SGD"
    )
    train.add_argument(
        "--warmup-epochs", type=int, default=None, help="default: 1 (float), 0 (QAT)"
    )
    train.set_defaults(func=run_train, mode=None)

    calibrate = subparsers.add_parser(
        "calibrate",
        help="post-training quantization: calibrate ranges and biases (no gradients)",
        description=(
            "Run QuantCalibrateModule over training data (ranges from statistics, bias "
            "calibration) starting from a float --checkpoint or --pretrained weights, then "
            "evaluate the quantized model. Writes last.pth / best.pth (q.module.state_dict(), "
            "ranges included) and metrics to --out."
        ),
    )
    _add_run_arguments(calibrate, epochs=1)
    calibrate.set_defaults(func=run_train, mode="calibrate", qat=False)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate a float, calibrated or QAT checkpoint",
        description=(
            "Evaluate on the validation split: top-1 / top-5 / loss (classification) or mIoU / "
            "pixel accuracy / loss (segmentation). A checkpoint with ranges (QAT or calibrated) "
            "is evaluated quantized."
        ),
    )
    _add_common_arguments(evaluate)
    evaluate.add_argument(
        "--qat",
        action="store_true",
        help="evaluate quantized (implied by a QAT or calibrated checkpoint)",
    )
    evaluate.add_argument("--out", type=Path, help="also write the metrics to OUT/eval.json")
    evaluate.set_defaults(func=run_evaluate)

    demo = subparsers.add_parser(
        "demo",
        help="the whole job on real data in minutes: float, PTQ, QAT, export, verify",
        description=(
            "Train mobilenetv2 in float on the embedded Fashion-MNIST subset (from torchvision "
            "weights when cached or given, else from scratch), calibrate (PTQ), fine-tune with "
            "QAT, evaluate all three, export and verify the QAT ONNX with its TIDL files, and "
            "write a table, a plot and results.json. --task segmentation does the same for "
            "deeplabv3plus_mobilenetv2 on COMPOSITE scenes built from Fashion-MNIST items."
        ),
    )
    demo.add_argument(
        "--task", choices=("classification", "segmentation"), default="classification"
    )
    demo.add_argument("--out", type=Path, default=Path("edgezoo-demo"), help="output folder")
    demo.add_argument("--epochs", type=int, help="float epochs (default: per task)")
    demo.add_argument("--qat-epochs", type=int, help="QAT epochs (default: per task)")
    demo.add_argument("--calibration-batches", type=int, help="PTQ batches (default: per task)")
    demo.add_argument("--input-size", type=int, help="input height = width (default: per task)")
    demo.add_argument("--batch-size", type=int)
    demo.add_argument("--lr", type=float, help="float learning rate (AdamW)")
    demo.add_argument("--qat-lr", type=float, help="QAT learning rate (AdamW)")
    demo.add_argument(
        "--full",
        action="store_true",
        help="use all of Fashion-MNIST (60000 / 10000) from /usr/share/datasets/fashion-mnist",
    )
    demo.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=None,
        metavar="TAG_OR_PATH",
        help="start from these weights (default: torchvision's when already in the torch.hub "
        "cache, else from scratch); downloads them if needed",
    )
    demo.add_argument(
        "--max-batches", type=int, help="cap batches per epoch and evaluation (quick runs)"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-workers", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace a previous demo in --out")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=run_demo)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name or alias (`edgezoo list`)")
    parser.add_argument("--data", default="embedded", help=_DATA_HELP)
    parser.add_argument(
        "--num-classes", type=int, help="classes (needed for segmentation folders only)"
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=False,
        metavar="TAG_OR_PATH",
        help="manifest weights (default tag, or a tag / file); a head of another size is "
        "re-initialised",
    )
    weights.add_argument(
        "--pretrained-backbone",
        nargs="?",
        const=True,
        default=False,
        metavar="TAG",
        help="ImageNet weights for a segmentation model's backbone",
    )
    weights.add_argument(
        "--checkpoint",
        type=Path,
        help="a run's last.pth / best.pth or a state_dict of this model (must fit exactly)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        help="input height = width (default: 32 for Fashion-MNIST, 64 for composite, else "
        "the model's default)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="per process (default 64)")
    parser.add_argument(
        "--max-batches", type=int, help="cap batches per epoch and per evaluation (quick runs)"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: CUDA when present")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_run_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    _add_common_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    parser.add_argument("--lr", type=float, help="learning rate (default: by mode and optimizer)")
    parser.add_argument("--seed", type=int, default=0)
    state = parser.add_mutually_exclusive_group()
    state.add_argument(
        "--resume", action="store_true", help="continue the run in --out with its saved settings"
    )
    state.add_argument("--overwrite", action="store_true", help="replace the run already in --out")


def _run_input_size(args: argparse.Namespace, task: str) -> int:
    from edgezoo.data import is_fashion_mnist_dir
    from edgezoo.registry import default_input_size

    if args.input_size:
        return args.input_size
    data = str(args.data)
    if data in ("embedded", "fashion-mnist", "composite") or is_fashion_mnist_dir(data):
        return 32 if task == "classification" else 64
    return default_input_size(args.model)[1]


def _pretrained(args: argparse.Namespace) -> dict[str, Any]:
    return {"pretrained": args.pretrained, "pretrained_backbone": args.pretrained_backbone}


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(title)
    for key, value in metrics.items():
        print(f"  {key:>10}: {value:.4f}")


def run_train(args: argparse.Namespace) -> int:
    """Train (float or QAT) or calibrate; print the final and best validation metrics."""
    from edgezoo.data import build_task_data
    from edgezoo.engine import TrainConfig, fit, load_run_config, setup_distributed
    from edgezoo.engine.checkpoint import check_run_dir, clear_run_dir
    from edgezoo.engine.distributed import barrier
    from edgezoo.engine.recipes import default_lr, default_warmup, default_weight_decay
    from edgezoo.engine.setup import build_model, model_task, preprocessing
    from edgezoo.errors import CheckpointMismatchError
    from edgezoo.registry import resolve_name

    name = resolve_name(args.model)
    ctx = setup_distributed(args.device)
    # Every rank checks before rank 0 changes anything, so all ranks agree on the outcome.
    check_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    barrier()
    if ctx.is_main and not args.resume:
        clear_run_dir(args.out)
    barrier()
    mean, std = preprocessing(name)

    if args.resume:
        config = load_run_config(args.out)
        meta = config.metadata
        if meta.get("model") != name:
            raise CheckpointMismatchError(
                f"{args.out} holds a run of {meta.get('model')}, not {name}; resume it with "
                f"--model {meta.get('model')}"
            )
        config.num_workers, config.device = args.num_workers, args.device
        logger.info("resuming %s with its saved settings", args.out)
        data = build_task_data(
            meta["data"], config.task, meta["input_size"], mean, std, num_classes=config.num_classes
        )
        # The weights come from last.pth, which fit() loads.
        model = build_model(name, config.num_classes, meta["input_size"], mode=config.mode)
    else:
        mode = args.mode or ("qat" if args.qat else "float")
        task = model_task(name)
        input_size = _run_input_size(args, task)
        data = build_task_data(args.data, task, input_size, mean, std, num_classes=args.num_classes)
        optimizer = getattr(args, "optimizer", "adamw")
        config = TrainConfig(
            task=task,
            mode=mode,
            num_classes=data.num_classes,
            ignore_index=data.ignore_index,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=_or(args.lr, default_lr(mode, optimizer)),
            optimizer=optimizer,
            weight_decay=_or(getattr(args, "weight_decay", None), default_weight_decay(optimizer)),
            schedule=getattr(args, "schedule", "cosine"),
            warmup_epochs=_or(getattr(args, "warmup_epochs", None), default_warmup(mode)),
            max_batches=args.max_batches,
            num_workers=args.num_workers,
            seed=args.seed,
            device=args.device,
            metadata={
                "model": name,
                "data": str(args.data),
                "input_size": input_size,
                "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                "pretrained": args.pretrained,
                "pretrained_backbone": args.pretrained_backbone,
            },
        )
        model = build_model(
            name,
            data.num_classes,
            input_size,
            mode=mode,
            checkpoint=args.checkpoint,
            **_pretrained(args),
        )
    logger.info("data: %s", data.description)
    result = fit(
        model,
        data.train,
        data.val,
        config,
        args.out,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if ctx.is_main:
        final = result.final
        _print_metrics(f"{name} {config.mode}, epoch {final['epoch']} (last.pth)", _val(final))
        if result.best is not None and result.best is not final:
            _print_metrics(f"best: epoch {result.best['epoch']} (best.pth)", _val(result.best))
    return 0


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _val(record: dict[str, Any]) -> dict[str, float]:
    return {k.removeprefix("val_"): v for k, v in record.items() if k.startswith("val_")}


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate one model on the validation split and print (and optionally save) its metrics."""
    from edgezoo.data import build_task_data
    from edgezoo.engine import TrainConfig, evaluate, setup_distributed
    from edgezoo.engine.checkpoint import write_json_atomic
    from edgezoo.engine.setup import build_model, is_quantized_state, model_task, preprocessing
    from edgezoo.registry import resolve_name
    from edgezoo.weights import read_state_dict

    name = resolve_name(args.model)
    task = model_task(name)
    ctx = setup_distributed(args.device)
    input_size = _run_input_size(args, task)
    mean, std = preprocessing(name)
    data = build_task_data(args.data, task, input_size, mean, std, num_classes=args.num_classes)
    quantized = args.qat
    if args.checkpoint is not None and not quantized:
        quantized = is_quantized_state(name, read_state_dict(args.checkpoint), data.num_classes)
    model = build_model(
        name,
        data.num_classes,
        input_size,
        mode="test" if quantized else "float",
        checkpoint=args.checkpoint,
        **_pretrained(args),
    )
    config = TrainConfig(
        task=task,
        num_classes=data.num_classes,
        ignore_index=data.ignore_index,
        batch_size=args.batch_size,
        max_batches=args.max_batches,
        num_workers=args.num_workers,
        device=args.device,
    )
    metrics = evaluate(model, data.val, config, ctx, progress=not args.no_progress)
    if ctx.is_main:
        kind = "quantized" if quantized else "float"
        _print_metrics(f"{name} ({kind}) on {data.description}", metrics)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                args.out / "eval.json",
                {"model": name, "quantized": quantized, "data": data.description, **metrics},
            )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo and print its table."""
    from edgezoo.engine.demo import DemoOptions
    from edgezoo.engine.demo import run_demo as run

    options = DemoOptions(
        task=args.task,
        out_dir=args.out,
        float_epochs=args.epochs,
        qat_epochs=args.qat_epochs,
        calibration_batches=args.calibration_batches,
        input_size=args.input_size,
        batch_size=args.batch_size,
        lr=args.lr,
        qat_lr=args.qat_lr,
        full=args.full,
        pretrained=args.pretrained,
        max_batches=args.max_batches,
        seed=args.seed,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    result = run(options)
    print(result.table())
    return 0 if result.ok else 1
