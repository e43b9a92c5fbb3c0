"""`edgezoo check NAME`: run the module-only and TIDL lint on a zoo, torchvision or timm model."""

import argparse
import dataclasses

import torch
from torch import nn

from edgezoo.check import check_model
from edgezoo.cli.arguments import add_input_size_hw
from edgezoo.errors import UnknownModelError, UsageError

_TORCHVISION_PREFIX = "torchvision:"
_TIMM_PREFIX = "timm:"
_DEFAULT_SIZE = (3, 224, 224)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `check` subcommand."""
    parser = subparsers.add_parser(
        "check",
        help="lint a model for module-only and TIDL rules",
        description=(
            "Build the model (random weights), run one forward and report reused modules, "
            "functional ops that should be modules, and resizes, concats and depthwise convs "
            "TIDL cannot run. NAME is a zoo name, a torchvision model name (or "
            "torchvision:NAME), or timm:NAME when timm is installed. Exits 0 when clean, 1 with "
            "violations."
        ),
    )
    parser.add_argument("name", help="zoo name or alias, torchvision name, or timm:NAME")
    parser.add_argument(
        "--fix",
        action="store_true",
        help="also convert it (edgezoo.make_module_only) and report what changed and what is "
        "left; exit 0 when the converted model is clean",
    )
    add_input_size_hw(parser)
    parser.set_defaults(func=run_check)


def build_named_model(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """A model with random weights for a zoo, torchvision or timm name, and its input size."""
    from edgezoo.registry import default_input_size, get_model

    if name.startswith(_TIMM_PREFIX):
        return _timm_model(name.removeprefix(_TIMM_PREFIX)), _DEFAULT_SIZE
    if not name.startswith(_TORCHVISION_PREFIX):
        try:
            return get_model(name), default_input_size(name)
        except UnknownModelError as error:
            zoo_error = error
    import torchvision

    torchvision_name = name.removeprefix(_TORCHVISION_PREFIX)
    if torchvision_name in torchvision.models.list_models():
        return torchvision.models.get_model(torchvision_name), _DEFAULT_SIZE
    if name.startswith(_TORCHVISION_PREFIX):
        raise UnknownModelError(
            f"torchvision has no model {torchvision_name!r}; see torchvision.models.list_models()"
        )
    raise zoo_error


def _timm_model(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        raise UsageError(
            f"timm:{name} needs timm: pip install timm (an optional extra, not a dependency)"
        ) from error
    if name not in timm.list_models():
        raise UnknownModelError(f"timm has no model {name!r}; see timm.list_models()")
    return timm.create_model(name)


def run_check(args: argparse.Namespace) -> int:
    """Print the lint report for one model (and with --fix, the conversion's); 0 when clean."""
    model, (channels, height, width) = build_named_model(args.name)
    if args.input_size:
        height, width = args.input_size
    example = torch.rand(1, channels, height, width)
    report = dataclasses.replace(check_model(model, example), model_name=args.name)
    print(report)
    if not args.fix:
        return 0 if report.ok else 1
    from edgezoo.conversion import make_module_only

    converted, changes = make_module_only(model, example, return_report=True)
    fixed = dataclasses.replace(
        check_model(converted, example), model_name=f"{args.name} after conversion"
    )
    print(f"conversion: {changes}")
    print(fixed)
    return 0 if fixed.ok else 1
