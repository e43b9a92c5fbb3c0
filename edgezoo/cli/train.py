"""`edgezoo train | calibrate | evaluate`: fine-tune, PTQ-calibrate, QAT and evaluate from the
shell, on one process or under torchrun."""

import argparse
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from edgezoo.cli.arguments import (
    DATA_HELP,
    add_quantization_scheme,
    add_weights_source,
    input_size,
    non_negative_float,
    non_negative_int,
    output_dir,
    positive_float,
    positive_int,
    quantization_config,
    seed,
)
from edgezoo.engine.run_dir import HELD_OUT, TEST_METRICS
from edgezoo.errors import ResumeMismatchError, RunExistsError, UsageError
from edgezoo.quantization.modes import CALIBRATE, FLOAT_RUN, QAT_RUN, TEST

logger = logging.getLogger(__name__)

# The option that sets each setting a resumed run keeps (edgezoo.engine.FIXED_ON_RESUME).
_OPTIONS = {
    "model": "--model",
    "data": "--data",
    "input_size": "--input-size",
    "mode": "--qat",
    "num_classes": "--num-classes",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "seed": "--seed",
    "optimizer": "--optimizer",
    "schedule": "--schedule",
    "weight_decay": "--weight-decay",
    "warmup_epochs": "--warmup-epochs",
    "max_batches": "--max-batches",
    "validation_split": "--validation-split",
    "quantization": "--target / --per-channel-weights / --asymmetric-activations / "
    "--activation-rounding / --bias-rule / --learn-ranges / --layer-bits",
    "distill": "--distill",
    "labels": "--no-labels",
    "distill_temperature": "--distill-temperature",
    "distill_weight": "--distill-weight",
    "range_lr": "--range-lr",
    "bn_freeze_epoch": "--freeze-bn-epoch",
    "range_freeze_epoch": "--freeze-ranges-epoch",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the train, calibrate and evaluate subcommands."""
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
    _add_run_arguments(calibrate, epochs=1)
    calibrate.set_defaults(func=run_train, mode=CALIBRATE, qat=False)
    _register_evaluate(subparsers)


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
    _add_run_arguments(train, epochs=10)
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


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate a float, calibrated or QAT checkpoint",
        description=(
            "Evaluate on the validation split: top-1 / top-5 / loss (classification) or mIoU / "
            "pixel accuracy / loss (segmentation). A checkpoint with ranges (QAT or calibrated) "
            "is evaluated quantized; one without ranges cannot be (use it in float)."
        ),
    )
    _add_common_arguments(evaluate)
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


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name or alias (`edgezoo list`)")
    parser.add_argument("--data", help=f"{DATA_HELP} (default embedded)")
    parser.add_argument(
        "--num-classes", type=positive_int, help="classes (needed for segmentation folders only)"
    )
    add_weights_source(parser, backbone=True)
    parser.add_argument(
        "--input-size",
        type=input_size,
        help="input height = width (default: 32 for Fashion-MNIST, 64 for composite, else "
        "the model's default)",
    )
    parser.add_argument("--batch-size", type=positive_int, help="per process (default 64)")
    parser.add_argument(
        "--max-batches",
        type=positive_int,
        help="cap batches per epoch and per evaluation (quick runs)",
    )
    parser.add_argument(
        "--num-workers", type=non_negative_int, default=0, help="DataLoader workers"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: CUDA when present")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_quantization_scheme(parser)


def _add_run_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    _add_common_arguments(parser)
    parser.add_argument("--out", type=output_dir, required=True, help="run folder")
    parser.add_argument("--epochs", type=positive_int, help=f"default {epochs}")
    parser.add_argument(
        "--lr", type=positive_float, help="learning rate (default: by mode and optimizer)"
    )
    parser.add_argument("--seed", type=seed, help="default 0")
    parser.add_argument(
        "--validation-split",
        type=non_negative_int,
        metavar="N",
        help="hold N training items out (a fixed seeded choice, recorded in OUT/held_out.json) "
        "and validate on them every epoch; the test set is evaluated once, at the end "
        "(OUT/test_metrics.json). Default 0: validate on the test set",
    )
    state = parser.add_mutually_exclusive_group()
    state.add_argument(
        "--resume", action="store_true", help="continue the run in --out with its saved settings"
    )
    state.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    parser.set_defaults(default_epochs=epochs)


def _run_input_size(args: argparse.Namespace, task: str, data: str) -> int:
    from edgezoo.data import DATA_NAMES, is_fashion_mnist_dir
    from edgezoo.registry import default_input_size
    from edgezoo.tasks import get_task

    if args.input_size:
        return args.input_size
    if data in DATA_NAMES or is_fashion_mnist_dir(data):
        return get_task(task).builtin_input_size
    return default_input_size(args.model)[1]


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(title)
    for key, value in metrics.items():
        print(f"  {key:>10}: {value:.4f}")


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


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
    optimizer = _or(getattr(args, "optimizer", None), "adamw")
    return TrainConfig(
        task=model_task(name),
        mode=mode,
        num_classes=data.num_classes,
        ignore_index=data.ignore_index,
        epochs=_or(args.epochs, args.default_epochs),
        batch_size=_or(args.batch_size, 64),
        lr=_or(args.lr, default_lr(mode, optimizer)),
        optimizer=optimizer,
        weight_decay=_or(
            getattr(args, "weight_decay", None), default_weight_decay(optimizer, mode)
        ),
        schedule=_or(getattr(args, "schedule", None), "cosine"),
        warmup_epochs=_or(getattr(args, "warmup_epochs", None), default_warmup(mode)),
        max_batches=args.max_batches,
        num_workers=args.num_workers,
        seed=_or(args.seed, 0),
        device=args.device,
        **_recipe(args),
        metadata={
            "model": name,
            "data": _or(args.data, "embedded"),
            "input_size": input_size,
            "validation_split": args.validation_split or 0,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "pretrained": args.pretrained,
            "pretrained_backbone": args.pretrained_backbone,
            "quantization": _scheme(args),
        },
    )


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The QAT recipe options a command line sets (freeze epochs, distillation)."""
    recipe = {
        "bn_freeze_epoch": getattr(args, "freeze_bn_epoch", None),
        "range_freeze_epoch": getattr(args, "freeze_ranges_epoch", None),
        "distill_temperature": getattr(args, "distill_temperature", None),
        "distill_weight": getattr(args, "distill_weight", None),
        "range_lr": getattr(args, "range_lr", None),
    }
    if getattr(args, "distill", False):
        recipe["distill"] = True
    if getattr(args, "no_labels", False):
        recipe["labels"] = False
    return {key: value for key, value in recipe.items() if value is not None}


def _scheme(args: argparse.Namespace) -> dict[str, Any]:
    """The quantization scheme options of a command line, as run metadata."""
    return {
        "target": args.target,
        "per_channel_weights": args.per_channel_weights,
        "asymmetric_activations": args.asymmetric_activations,
        "activation_rounding": args.activation_rounding,
        "bias_rule": args.bias_rule,
        "learn_ranges": getattr(args, "learn_ranges", False),
        "layer_bits": getattr(args, "layer_bits", None),
    }


def _given_on_resume(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The fixed settings this command line sets explicitly, by TrainConfig field or metadata."""
    given = {
        "model": name,
        "data": args.data,
        "input_size": args.input_size,
        "num_classes": args.num_classes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "optimizer": getattr(args, "optimizer", None),
        "schedule": getattr(args, "schedule", None),
        "weight_decay": getattr(args, "weight_decay", None),
        "warmup_epochs": getattr(args, "warmup_epochs", None),
        "max_batches": args.max_batches,
        "validation_split": args.validation_split,
    }
    if getattr(args, "qat", False):
        given["mode"] = QAT_RUN
    if any(v for v in _scheme(args).values()):
        given["quantization"] = _scheme(args)
    given.update(_recipe(args))
    return {key: value for key, value in given.items() if value is not None}


def _resumed_config(args: argparse.Namespace, name: str):
    """The saved settings of the run in --out; refuse options that differ from them."""
    from edgezoo.engine import load_run_config, resume_differences

    weights = [
        f"{option} {value if value is not True else ''}".strip()
        for option, value in (
            ("--checkpoint", getattr(args, "checkpoint", None)),
            ("--pretrained", getattr(args, "pretrained", None)),
            ("--pretrained-backbone", getattr(args, "pretrained_backbone", None)),
        )
        if value
    ]
    if weights:
        raise ResumeMismatchError(
            f"--resume continues from the weights saved in {args.out}, so {', '.join(weights)} "
            "would be ignored: drop it to resume, or start a new run from those weights with "
            "--overwrite or another --out"
        )
    config = load_run_config(args.out)
    differences = resume_differences(config.to_dict(), _given_on_resume(args, name))
    differ = [
        text
        for key, (saved, value) in differences.items()
        for text in _described_difference(key, saved, value)
    ]
    if differ:
        raise ResumeMismatchError(
            f"--resume continues {args.out} with the settings it was started with, and these "
            f"options differ: {'; '.join(differ)}. Drop them, or start a new run with "
            "--overwrite or another --out"
        )
    if args.epochs is not None and args.epochs != config.epochs:
        logger.warning(
            "resuming %s with --epochs %d instead of %d: the learning-rate schedule and the QAT "
            "freeze epochs follow the new length from here on",
            args.out,
            args.epochs,
            config.epochs,
        )
        config.epochs = args.epochs
    config.num_workers, config.device = args.num_workers, args.device
    return config


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


_SCHEME_FLAGS = {
    "target": "--target",
    "per_channel_weights": "--per-channel-weights",
    "asymmetric_activations": "--asymmetric-activations",
    "activation_rounding": "--activation-rounding",
    "bias_rule": "--bias-rule",
    "learn_ranges": "--learn-ranges",
    "layer_bits": "--layer-bits",
}


def _described_difference(key: str, saved: Any, value: Any) -> list[str]:
    """One setting that differs on resume, in the command line's words (a quantization scheme
    option by option)."""
    if not (isinstance(saved, dict) and isinstance(value, dict)):
        return [f"{_OPTIONS[key]} {value} (the run uses {saved})"]
    texts = []
    for field in sorted(set(saved) | set(value)):
        before, now = saved.get(field), value.get(field)
        if before == now:
            continue
        flag = _SCHEME_FLAGS.get(field, field)
        if isinstance(before, bool) or isinstance(now, bool):
            used = "the run was started with it" if before else "the run was started without it"
            texts.append(f"{flag} {'given' if now else 'not given'} ({used})")
        else:
            used = "the default" if before is None else before
            texts.append(f"{flag} {'its default' if now is None else now} (the run uses {used})")
    return texts


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
        config = _resumed_config(args, name)
        meta = config.metadata
        data = _task_data(
            name,
            config.task,
            meta["data"],
            meta["input_size"],
            config.num_classes,
            meta.get("validation_split", 0),
        )
    else:
        task = model_task(name)
        data_name = _or(args.data, "embedded")
        input_size = _run_input_size(args, task, data_name)
        data = _task_data(
            name, task, data_name, input_size, args.num_classes, args.validation_split or 0
        )
        config = _new_config(args, name, data, input_size)
        if ctx.is_main and data.held_out:
            _write_held_out(args.out, data)
    logger.info("data: %s", data.description)
    weights = {} if args.resume else _weights(args)
    input_size = config.metadata["input_size"]
    # Seeded before building, so a run from random initialisation repeats exactly.
    scheme = argparse.Namespace(**config.metadata.get("quantization") or _scheme(args))
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
            _print_metrics(f"test set (the final figure, {TEST_METRICS})", test)
    return 0


def _task_data(
    name: str,
    task: str,
    data: str,
    input_size: int,
    num_classes: int | None,
    validation_split: int = 0,
):
    """The train/val(/test) data of a run, normalised as the model's weights expect."""
    from edgezoo.registry import preprocessing
    from edgezoo.tasks import build_task_data

    mean, std = preprocessing(name)
    return build_task_data(
        data,
        task,
        input_size,
        mean,
        std,
        num_classes=num_classes,
        validation_split=validation_split,
    )


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


def _weights(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pretrained": args.pretrained,
        "pretrained_backbone": args.pretrained_backbone,
        "checkpoint": args.checkpoint,
    }


def _print_result(name: str, mode: str, result: Any) -> None:
    final = result.final
    _print_metrics(f"{name} {mode}, epoch {final['epoch']} (last.pth)", _val(final))
    if result.best is not None and result.best is not final:
        _print_metrics(f"best: epoch {result.best['epoch']} (best.pth)", _val(result.best))


def _val(record: dict[str, Any]) -> dict[str, float]:
    return {k.removeprefix("val_"): v for k, v in record.items() if k.startswith("val_")}


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
    data_name = _or(args.data, "embedded")
    input_size = _run_input_size(args, task, data_name)
    data = _task_data(name, task, data_name, input_size, args.num_classes)
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
        **_weights(args),
    )
    config = TrainConfig(
        task=task,
        num_classes=data.num_classes,
        ignore_index=data.ignore_index,
        batch_size=_or(args.batch_size, 64),
        max_batches=args.max_batches,
        num_workers=args.num_workers,
        device=args.device,
    )
    metrics = evaluate(model, data.val, config, ctx, progress=not args.no_progress)
    if not ctx.is_main:
        return 0
    kind = "quantized" if quantized else "float"
    _print_metrics(f"{name} ({kind}) on {data.description}", metrics)
    record = {"model": name, "quantized": quantized, "data": data.description, **metrics}
    if args.simulate:
        record["integer_simulation"] = _simulated(args, data, config)
        _print_metrics(f"{args.onnx} in TIDL's integer arithmetic", record["integer_simulation"])
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
