"""What a run's command line says about its settings, and what `--resume` may change: the
options become run metadata, and a resume is checked against the engine's one rule
(edgezoo.engine.FIXED_ON_RESUME), its differences named in the command line's words."""

import argparse
import logging
from typing import Any

from edgezoo.errors import ResumeMismatchError
from edgezoo.quantization.modes import QAT_RUN

logger = logging.getLogger(__name__)

_SCHEME_FLAGS = {
    "target": "--target",
    "per_channel_weights": "--per-channel-weights",
    "asymmetric_activations": "--asymmetric-activations",
    "activation_rounding": "--activation-rounding",
    "bias_rule": "--bias-rule",
    "learn_ranges": "--learn-ranges",
    "layer_bits": "--layer-bits",
}


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
    "quantization": " / ".join(_SCHEME_FLAGS.values()),
    "distill": "--distill",
    "labels": "--no-labels",
    "distill_temperature": "--distill-temperature",
    "distill_weight": "--distill-weight",
    "range_lr": "--range-lr",
    "bn_freeze_epoch": "--freeze-bn-epoch",
    "range_freeze_epoch": "--freeze-ranges-epoch",
}


def run_recipe(args: argparse.Namespace) -> dict[str, Any]:
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


def run_scheme(args: argparse.Namespace) -> dict[str, Any]:
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
    if any(v for v in run_scheme(args).values()):
        given["quantization"] = run_scheme(args)
    given.update(run_recipe(args))
    return {key: value for key, value in given.items() if value is not None}


def resumed_config(args: argparse.Namespace, name: str):
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
        for text in described_difference(key, saved, value)
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


def described_difference(key: str, saved: Any, value: Any) -> list[str]:
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
