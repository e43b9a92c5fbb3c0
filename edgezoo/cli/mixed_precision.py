"""`edgezoo mixed-precision`: choose the 16-bit layers of a float model from measurement."""

import argparse
import logging
from pathlib import Path

from edgezoo.cli.arguments import (
    DATA_HELP,
    add_input_size_hw,
    add_quantization_scheme,
    add_weights_source,
    positive_int,
    quantization_config,
)
from edgezoo.errors import RunExistsError, UsageError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mixed-precision",
        help="choose the layers to run in 16 bits within a MAC budget, from measured SQNR",
        description=(
            "Calibrate the float model at 8 bits, then once per conv/linear layer with that "
            "layer alone at 16 bits, on a few training batches; rank the layers by output SQNR "
            "gain per MAC and write the set that fits --budget as JSON, which `edgezoo train "
            "--layer-bits FILE` and `edgezoo export --qat --layer-bits FILE` read."
        ),
    )
    parser.add_argument("name", help="model name or alias, as `edgezoo list` shows it")
    add_weights_source(parser, backbone=False)
    parser.add_argument("--data", default="embedded", help=f"training images: {DATA_HELP}")
    parser.add_argument("--num-classes", type=positive_int, help="classes of the head")
    add_input_size_hw(parser)
    parser.add_argument(
        "--budget",
        type=_share,
        default=0.1,
        help="share of the model's MACs allowed in 16 bits, in [0, 1] (default 0.1)",
    )
    parser.add_argument("--batches", type=positive_int, default=4, help="batches (default 4)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="default 64")
    add_quantization_scheme(parser)
    parser.add_argument("-o", "--out", required=True, type=Path, help="the JSON file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_mixed_precision)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share of MACs in [0, 1], got {text!r}")
    return value


def run_mixed_precision(args: argparse.Namespace) -> int:
    """Measure, choose, write the JSON and print the choice."""
    import torch
    from torch.utils.data import DataLoader

    from edgezoo.fileio import write_json_atomic
    from edgezoo.quantization.selection import select_16bit_layers
    from edgezoo.registry import default_input_size, get_model, model_info, resolve_name
    from edgezoo.tasks import build_task_data, get_task

    if args.out.exists() and not args.overwrite:
        raise RunExistsError(f"{args.out} exists; pass --overwrite to replace it")
    if args.layer_bits:
        raise UsageError("--layer-bits is what this command chooses: drop it")
    name = resolve_name(args.name)
    model = get_model(
        name, pretrained=args.checkpoint or args.pretrained, num_classes=args.num_classes
    )
    height = args.input_size[0] if args.input_size else default_input_size(name)[1]
    task = get_task(model_info(name)["task"])
    data = build_task_data(args.data, task, height, augment=False, num_classes=args.num_classes)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(
        data.train,
        batch_size=args.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=task.collate_fn,
    )
    choice = select_16bit_layers(
        model,
        loader,
        budget=args.budget,
        batches=args.batches,
        config=quantization_config(args),
        progress=not args.no_progress,
    )
    write_json_atomic(args.out, {"model": name, **choice.to_dict()})
    print(
        f"{len(choice.layer_bits)} layer(s) in 16 bits ({choice.used:.1%} of MACs, budget "
        f"{choice.budget:.1%}): output SQNR {choice.sqnr_8bit_db:.2f} dB at 8 bits -> "
        f"{choice.sqnr_selected_db:.2f} dB; {', '.join(choice.layer_bits) or 'none'}; "
        f"measured in {choice.seconds:.0f} s; written to {args.out}"
    )
    return 0
