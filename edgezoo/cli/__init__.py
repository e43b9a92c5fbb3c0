"""The `edgezoo` command: one entry point whose subcommands live in sibling modules."""

import argparse
import logging
import sys
from collections.abc import Sequence

from edgezoo.errors import EdgezooError

# Each module contributes its subcommands through `register(subparsers)`; keeping the list here
# makes the command set explicit without any import-time side effects.
_COMMAND_MODULES: tuple[str, ...] = (
    "check",
    "models",
    "export",
    "simulate",
    "train",
    "evaluate",
    "mixed_precision",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="edgezoo", description="QAT-ready models and ONNX export for TI TIDL."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"edgezoo.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except EdgezooError as err:
        print(f"edgezoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgezoo {args.command}: interrupted", file=sys.stderr)
        return 130
