"""`edgezoo demo`: the whole job on real data in minutes, from the shell."""

import argparse
from pathlib import Path

from edgezoo.cli.arguments import (
    input_size,
    non_negative_int,
    output_dir,
    positive_float,
    positive_int,
    seed,
)
from edgezoo.tasks import CLASSIFICATION, task_names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the demo subcommand."""
    demo = subparsers.add_parser(
        "demo",
        help="the whole job on real data in minutes: float, PTQ, QAT, export, verify",
        description=(
            "Train mobilenetv2 in float on the embedded Fashion-MNIST subset (from torchvision "
            "weights when cached or given, else from scratch), calibrate (PTQ), fine-tune with "
            "QAT, evaluate all three, export and verify the QAT ONNX with its TIDL files, and "
            "write a table, a plot and results.json. --task segmentation does the same for "
            "deeplabv3plus_mobilenetv2 on COMPOSITE scenes built from Fashion-MNIST items; "
            "--task detection for yolox_nano_lite on COMPOSITE detection scenes (mAP), "
            "with examples.png showing its boxes."
        ),
    )
    demo.add_argument("--task", choices=task_names(), default=CLASSIFICATION)
    demo.add_argument("--out", type=output_dir, default=Path("edgezoo-demo"), help="output folder")
    demo.add_argument("--epochs", type=positive_int, help="float epochs (default: per task)")
    demo.add_argument("--qat-epochs", type=positive_int, help="QAT epochs (default: per task)")
    demo.add_argument(
        "--calibration-batches", type=positive_int, help="PTQ batches (default: per task)"
    )
    demo.add_argument(
        "--input-size", type=input_size, help="input height = width (default: per task)"
    )
    demo.add_argument("--batch-size", type=positive_int)
    demo.add_argument("--lr", type=positive_float, help="float learning rate (AdamW)")
    demo.add_argument("--qat-lr", type=positive_float, help="QAT learning rate (AdamW)")
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
        "--max-batches", type=positive_int, help="cap batches per epoch and evaluation (quick runs)"
    )
    demo.add_argument("--seed", type=seed, default=0)
    demo.add_argument("--num-workers", type=non_negative_int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace a previous demo in --out")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo and print its table."""
    from edgezoo.demo import DemoOptions
    from edgezoo.demo import run_demo as run

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
