"""Options and helpers the run commands share (train, calibrate, evaluate): the model, data,
weights and device options, the input size a run uses, its data and how metrics print."""

import argparse
from typing import Any

from edgezoo.cli.arguments import (
    DATA_HELP,
    add_quantization_scheme,
    add_weights_source,
    input_size,
    non_negative_int,
    output_dir,
    positive_float,
    positive_int,
    seed,
)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name or alias (`edgezoo list`)")
    parser.add_argument("--data", help=f"{DATA_HELP} (default embedded)")
    parser.add_argument(
        "--num-classes", type=positive_int, help="classes (needed for segmentation folders only)"
    )
    add_weights_source(parser, backbone=True)
    parser.add_argument(
        "--input-size",
        type=input_size,
        help="input height = width (default: 32 for Fashion-MNIST, 64 for composite, 128 for "
        "composite-detection, else the model's default)",
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


def add_run_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    add_common_arguments(parser)
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


def run_input_size(args: argparse.Namespace, task: str, data: str) -> int:
    from edgezoo.data import DATA_NAMES, is_fashion_mnist_dir
    from edgezoo.registry import default_input_size
    from edgezoo.tasks import get_task

    if args.input_size:
        return args.input_size
    if data in DATA_NAMES or is_fashion_mnist_dir(data):
        return get_task(task).builtin_input_size
    return default_input_size(args.model)[1]


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(title)
    for key, value in metrics.items():
        print(f"  {key:>10}: {value:.4f}")


def or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


def task_data(
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


def weights_source(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pretrained": args.pretrained,
        "pretrained_backbone": args.pretrained_backbone,
        "checkpoint": args.checkpoint,
    }
