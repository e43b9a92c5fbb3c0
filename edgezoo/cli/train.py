"""`edgezoo train | calibrate`: fine-tune, PTQ-calibrate and QAT from the shell, on one process
or under torchrun."""

import argparse
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from edgezoo.cli.arguments import (
    non_negative_float,
    non_negative_int,
    positive_float,
    quantization_config,
)
from edgezoo.cli.run_arguments import (
    add_run_arguments,
    or_default,
    print_metrics,
    run_input_size,
    task_data,
    weights_source,
)
from edgezoo.cli.run_resume import resumed_config, run_recipe, run_scheme
from edgezoo.engine.run_dir import HELD_OUT, TEST_METRICS
from edgezoo.errors import ResumeMismatchError, RunExistsError, UsageError
from edgezoo.quantization.modes import CALIBRATE, FLOAT_RUN, QAT_RUN

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the train and calibrate subcommands."""
    _register_train(subparsers)
    calibrate = subparsers.add_parser(
        CALIBRATE,
        help="post-training quantization: calibrate ranges and biases (no gradients)",
        description=(
            "Run QuantCalibrateModule over training data (ranges from statistics, bias "
            "calibration) starting from a float --checkpoint or --pretrained weights, then "
            "evaluate the quantized model. Writes last.pth / best.pth (q.module.state_dict(), "
            "ranges included) and metrics to --out."
        ),
    )
    add_run_arguments(calibrate, epochs=1)
    calibrate.set_defaults(func=run_train, mode=CALIBRATE, qat=False)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="fine-tune a model in float or with QAT (--qat)",
        description=(
            "Train in float, or quantization-aware (--qat) from a float --checkpoint or "
            "--pretrained weights. Writes last.pth / best.pth every epoch (atomically) and "
            "metrics.csv / metrics.json to --out. Runs under torchrun unchanged."
        ),
    )
    add_run_arguments(train, epochs=10)
    train.add_argument(
        "--qat", action="store_true", help="quantization-aware training (QuantTrainModule)"
    )
    train.add_argument("--optimizer", choices=("sgd", "adamw"), help="default adamw")
    train.add_argument(
        "--schedule",
        choices=("cosine", "step", "constant"),
        help="per-epoch learning-rate schedule (default cosine)",
    )
    train.add_argument(
        "--weight-decay",
        type=non_negative_float,
        help="default: 0.05 AdamW (0 in QAT), 4e-5 SGD",
    )
    train.add_argument("--warmup-epochs", type=non_negative_int, help="default: 1 (float), 0 (QAT)")
    _add_qat_recipe_arguments(train)
    train.set_defaults(func=run_train, mode=None)


def _add_qat_recipe_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument(
        "--freeze-bn-epoch",
        type=non_negative_int,
        help="QAT: BN statistics stay frozen from this epoch (counted from 0; default TI's "
        "epochs//2 - 1)",
    )
    train.add_argument(
        "--freeze-ranges-epoch",
        type=non_negative_int,
        help="QAT: activation ranges stay frozen from this epoch (default TI's epochs//2 + 1)",
    )
    train.add_argument(
        "--distill",
        action="store_true",
        help="distil from the float model the run starts from (--checkpoint / --pretrained): "
        "KL divergence on softened logits mixed with the task loss",
    )
    train.add_argument(
        "--no-labels",
        action="store_true",
        help="with --distill: learn from the float model's outputs alone (labels unused)",
    )
    train.add_argument(
        "--learn-ranges",
        action="store_true",
        help="QAT: train each power-of-two clip by gradient in the log2 domain (TQT) after "
        "statistics start it, instead of following statistics",
    )
    train.add_argument(
        "--range-lr",
        type=positive_float,
        help="with --learn-ranges: the thresholds' learning rate (default 0.01)",
    )
    train.add_argument("--distill-temperature", type=positive_float, help="default 2")
    train.add_argument(
        "--distill-weight",
        type=non_negative_float,
        help="share of the distillation term in [0, 1] (default 0.5)",
    )


def _new_config(args: argparse.Namespace, name: str, data: Any, input_size: int):
    """The TrainConfig of a new run from the command line and the mode's defaults."""
    from edgezoo.engine import TrainConfig
    from edgezoo.engine.recipes import (
        default_lr,
        default_warmup,
        default_weight_decay,
    )
    from edgezoo.engine.setup import model_task

    mode = args.mode or (QAT_RUN if args.qat else FLOAT_RUN)
    optimizer = or_default(getattr(args, "optimizer", None), "adamw")
    return TrainConfig(
        task=model_task(name),
        mode=mode,
        num_classes=data.num_classes,
        ignore_index=data.ignore_index,
        epochs=or_default(args.epochs, args.default_epochs),
        batch_size=or_default(args.batch_size, 64),
        lr=or_default(args.lr, default_lr(mode, optimizer)),
        optimizer=optimizer,
        weight_decay=or_default(
            getattr(args, "weight_decay", None), default_weight_decay(optimizer, mode)
        ),
        schedule=or_default(getattr(args, "schedule", None), "cosine"),
        warmup_epochs=or_default(getattr(args, "warmup_epochs", None), default_warmup(mode)),
        max_batches=args.max_batches,
        num_workers=args.num_workers,
        seed=or_default(args.seed, 0),
        device=args.device,
        **run_recipe(args),
        metadata={
            "model": name,
            "data": or_default(args.data, "embedded"),
            "input_size": input_size,
            "validation_split": args.validation_split or 0,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "pretrained": args.pretrained,
            "pretrained_backbone": args.pretrained_backbone,
            "quantization": run_scheme(args),
        },
    )


_QAT_ONLY = {
    "freeze_bn_epoch": "--freeze-bn-epoch",
    "freeze_ranges_epoch": "--freeze-ranges-epoch",
    "distill": "--distill",
    "no_labels": "--no-labels",
    "distill_temperature": "--distill-temperature",
    "distill_weight": "--distill-weight",
    "learn_ranges": "--learn-ranges",
    "range_lr": "--range-lr",
    "layer_bits": "--layer-bits",
}


def _refuse_idle_options(args: argparse.Namespace) -> None:
    """Refuse options that would do nothing in this run, before anything is written."""
    values = {flag: getattr(args, key, None) for key, flag in _QAT_ONLY.items()}
    given = {flag for flag, value in values.items() if value is not None and value is not False}
    if given and not args.resume and args.mode is None and not args.qat:
        raise UsageError(f"{', '.join(sorted(given))} only act in QAT: add --qat")
    lone = given & {"--distill-temperature", "--distill-weight", "--no-labels"}
    if lone and "--distill" not in given:
        raise UsageError(f"{', '.join(sorted(lone))} only act with --distill: add it or drop them")
    if {"--no-labels", "--distill-weight"} <= given:
        raise UsageError(
            "--distill-weight mixes the distillation term with the labels' loss; with "
            "--no-labels the loss is the distillation term alone: drop --distill-weight"
        )
    if "--range-lr" in given and "--learn-ranges" not in given:
        raise UsageError("--range-lr is the learned ranges' learning rate: add --learn-ranges")
    epochs = args.epochs or args.default_epochs
    for key in () if args.resume else ("freeze_bn_epoch", "freeze_ranges_epoch"):
        epoch = getattr(args, key, None)
        if epoch is not None and epoch >= epochs:
            raise UsageError(
                f"{_QAT_ONLY[key]} {epoch} is never reached in a run of {epochs} epochs "
                "(counted from 0): lower it, or raise --epochs"
            )


def _keep_inputs(args: argparse.Namespace) -> None:
    """Refuse an --overwrite that would delete the --checkpoint the run starts from."""
    from edgezoo.engine.run_dir import RUN_FILES

    checkpoint = getattr(args, "checkpoint", None)
    if not (args.overwrite and checkpoint):
        return
    run_files = {(args.out / name).resolve() for name in RUN_FILES}
    if Path(checkpoint).expanduser().resolve() in run_files:
        raise RunExistsError(
            f"--checkpoint {checkpoint} is a file of the run in {args.out} that --overwrite "
            "would delete; copy it elsewhere first, or choose another --out"
        )


def _prepare_out(args: argparse.Namespace, ctx: Any) -> None:
    """Check --out on every rank before rank 0 clears it, so all ranks agree."""
    from edgezoo.engine.distributed import barrier
    from edgezoo.engine.run_dir import check_run_dir, clear_run_dir

    check_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    barrier()
    if ctx.is_main and not args.resume:
        clear_run_dir(args.out)
    barrier()


def run_train(args: argparse.Namespace) -> int:
    """Train (float or QAT) or calibrate in --out, held for this run alone (rank 0 holds its
    lock: a second run into the same folder is refused)."""
    from edgezoo.engine import setup_distributed
    from edgezoo.fileio import folder_lock
    from edgezoo.registry import resolve_name

    name = resolve_name(args.model)
    _refuse_idle_options(args)
    if not args.resume:
        quantization_config(args)  # the scheme is checked before --out exists
    _keep_inputs(args)
    ctx = setup_distributed(args.device)
    held = (
        folder_lock(args.out, f"edgezoo {getattr(args, 'command', 'train')}")
        if ctx.is_main
        else nullcontext()
    )
    with held:
        return _train(args, ctx, name)


def _train(args: argparse.Namespace, ctx: Any, name: str) -> int:
    """The run itself: its settings and data, the model, fit, the final test figure."""
    from edgezoo.engine import fit
    from edgezoo.engine.setup import build_model, model_task

    _prepare_out(args, ctx)
    if args.resume:
        config = resumed_config(args, name)
        meta = config.metadata
        data = task_data(
            name,
            config.task,
            meta["data"],
            meta["input_size"],
            config.num_classes,
            meta.get("validation_split", 0),
        )
    else:
        task = model_task(name)
        data_name = or_default(args.data, "embedded")
        input_size = run_input_size(args, task, data_name)
        data = task_data(
            name, task, data_name, input_size, args.num_classes, args.validation_split or 0
        )
        config = _new_config(args, name, data, input_size)
        if ctx.is_main and data.held_out:
            _write_held_out(args.out, data)
    logger.info("data: %s", data.description)
    weights = {} if args.resume else weights_source(args)
    input_size = config.metadata["input_size"]
    # Seeded before building, so a run from random initialisation repeats exactly.
    scheme = argparse.Namespace(**config.metadata.get("quantization") or run_scheme(args))
    model = build_model(
        name,
        config.num_classes,
        input_size,
        mode=config.mode,
        seed=config.seed,
        config=quantization_config(scheme),
        **weights,
    )
    result = fit(
        model,
        data.train,
        data.val,
        config,
        args.out,
        resume=args.resume,
        progress=not args.no_progress,
        teacher=_teacher(name, config) if config.distill else None,
    )
    test = _final_test(model, data, config, ctx, args) if data.test is not None else None
    if ctx.is_main:
        _print_result(name, config.mode, result)
        if test is not None:
            print_metrics(f"test set (the final figure, {TEST_METRICS})", test)
    return 0


def _write_held_out(out: Path, data: Any) -> None:
    """Record which training items the run holds out for validation."""
    from edgezoo.data import VALIDATION_SEED
    from edgezoo.fileio import write_json_atomic

    record = {"size": len(data.held_out), "seed": VALIDATION_SEED, "items": list(data.held_out)}
    write_json_atomic(out / HELD_OUT, record)


def _final_test(model: Any, data: Any, config: Any, ctx: Any, args: argparse.Namespace):
    """The finished model's metrics on the test set, evaluated once (and written by rank 0)."""
    from edgezoo.engine import evaluate
    from edgezoo.fileio import write_json_atomic

    metrics = evaluate(model, data.test, config, ctx, progress=not args.no_progress)
    if ctx.is_main:
        write_json_atomic(args.out / TEST_METRICS, {"epoch": config.epochs, **metrics})
    return metrics


def _teacher(name: str, config: Any):
    """The float model a distilling run learns from: the weights the run started from."""
    from edgezoo.engine.setup import build_model

    meta = config.metadata
    if not (meta.get("checkpoint") or meta.get("pretrained")):
        raise UsageError(
            "--distill learns from the float model the run starts from: give its weights with "
            "--checkpoint FILE (or --pretrained)"
        )
    if meta.get("checkpoint"):
        _same_teacher(meta)
    return build_model(
        name,
        config.num_classes,
        meta["input_size"],
        pretrained=meta.get("pretrained") or False,
        pretrained_backbone=meta.get("pretrained_backbone") or False,
        checkpoint=meta.get("checkpoint"),
    )


def _same_teacher(meta: dict[str, Any]) -> None:
    """Record the teacher checkpoint's sha256 in a new run; a resumed run's teacher must still
    be that file (a changed teacher would silently distil another model)."""
    from edgezoo.fileio import file_sha256

    path = meta["checkpoint"]
    digest = file_sha256(path) if Path(path).is_file() else None
    recorded = meta.setdefault("teacher_sha256", digest)
    if recorded != digest:
        raise ResumeMismatchError(
            f"the run distils from {path}, which has changed since it started (sha256 "
            f"{recorded} then, {digest} now): put that file back to resume, or start a new run "
            "with --overwrite or another --out"
        )


def _print_result(name: str, mode: str, result: Any) -> None:
    final = result.final
    print_metrics(f"{name} {mode}, epoch {final['epoch']} (last.pth)", _val(final))
    if result.best is not None and result.best is not final:
        print_metrics(f"best: epoch {result.best['epoch']} (best.pth)", _val(result.best))


def _val(record: dict[str, Any]) -> dict[str, float]:
    return {k.removeprefix("val_"): v for k, v in record.items() if k.startswith("val_")}
