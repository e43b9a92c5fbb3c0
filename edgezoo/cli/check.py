"""`edgezoo check NAME`: run the module-only and TIDL lint on a registered model."""

import argparse
import dataclasses

import torch

from edgezoo.check import check_model
from edgezoo.cli.arguments import add_input_size_hw


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `check` subcommand."""
    parser = subparsers.add_parser(
        "check",
        help="lint a model for module-only and TIDL rules",
        description=(
            "Build the model (random weights), run one forward and report reused modules, "
            "functional ops that should be modules, and resizes, concats and depthwise convs "
            "TIDL cannot run. Exits 0 when clean, 1 with violations."
        ),
    )
    parser.add_argument("name", help="model name or alias, as `edgezoo list` shows it")
    add_input_size_hw(parser)
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Print the lint report for one model; return 0 when clean, 1 with violations."""
    from edgezoo.registry import default_input_size, get_model

    model = get_model(args.name)
    channels, height, width = default_input_size(args.name)
    if args.input_size:
        height, width = args.input_size
    report = check_model(model, torch.rand(1, channels, height, width))
    report = dataclasses.replace(report, model_name=args.name)
    print(report)
    return 0 if report.ok else 1
