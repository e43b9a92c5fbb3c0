"""`edgezoo export NAME -o DIR` and `edgezoo verify FILE.onnx`: TIDL-ready ONNX from the shell."""

import argparse
import logging
import sys
from pathlib import Path

from edgezoo.errors import ExportVerificationError
from edgezoo.export import export_onnx, verify_onnx
from edgezoo.export.tidl_rules import EXPORT_OPSETS

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the export and verify subcommands."""
    export = subparsers.add_parser(
        "export",
        help="export a model to a verified TIDL-ready ONNX file plus TIDL configs",
        description=(
            "Build the model (with --checkpoint or --pretrained weights), export it with the "
            "TorchScript ONNX exporter, simplify, verify TIDL's rules, check onnxruntime "
            "against PyTorch and write the TIDL compile options, import config and model "
            "config beside the ONNX file. Exits 0 when the export is TIDL-ready, 1 when it "
            "breaks a rule (nothing written unless --no-strict)."
        ),
    )
    export.add_argument("name", help="model name or alias, as `edgezoo list` shows it")
    export.add_argument("-o", "--output-dir", required=True, type=Path, help="output folder")
    export.add_argument(
        "--qat", action="store_true", help="export the QAT graph (Clip ranges, grid weights)"
    )
    weights = export.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint",
        type=Path,
        help="state_dict of the float or QAT model (q.module.state_dict()) or an engine "
        "checkpoint with a 'model' key",
    )
    weights.add_argument(
        "--pretrained", action="store_true", help="the manifest's default float weights"
    )
    export.add_argument(
        "--num-classes", type=int, help="classes of the head (default: the checkpoint's)"
    )
    export.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="input height and width (default: the model's default input size)",
    )
    export.add_argument(
        "--opset",
        type=int,
        default=11,
        choices=EXPORT_OPSETS,
        help="ONNX opset (default 11, TI's QAT recipe)",
    )
    export.add_argument(
        "--argmax", action="store_true", help="append ArgMax over the classes (segmentation)"
    )
    export.add_argument(
        "--no-simplify", action="store_true", help="skip onnxsim (keep the exporter's graph)"
    )
    export.add_argument(
        "--no-strict", action="store_true", help="write the file even when it breaks a rule"
    )
    export.set_defaults(func=run_export)

    verify = subparsers.add_parser(
        "verify",
        help="check an ONNX file against TIDL's import rules",
        description=(
            "List every TIDL rule the graph breaks, with the node name. QAT rules (power-of-"
            "two Clip ranges covering every Conv/Gemm/Add/Concat output, grid weights, a "
            "clipped input) apply unless --float. Exits 0 when clean, 1 with violations."
        ),
    )
    verify.add_argument("path", type=Path, help="the .onnx file")
    verify.add_argument(
        "--float", action="store_true", help="a float model that TIDL calibrates (PTQ rules)"
    )
    verify.add_argument(
        "--no-input-clip",
        action="store_true",
        help="the QAT model was trained with quantize_input=False",
    )
    verify.set_defaults(func=run_verify)


def run_export(args: argparse.Namespace) -> int:
    """Export one model; print the report; 0 when TIDL-ready, 1 when a rule is broken."""
    import torch

    from edgezoo.registry import default_input_size, get_model, resolve_name

    name = resolve_name(args.name)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        print(f"edgezoo export: error: no checkpoint file at {args.checkpoint}", file=sys.stderr)
        return 2
    pretrained = args.checkpoint or args.pretrained
    if not pretrained:
        logger.warning(
            "%s: exporting randomly initialised weights; pass --checkpoint FILE or --pretrained",
            name,
        )
    model = get_model(
        name, pretrained=pretrained, num_classes=args.num_classes, qat="test" if args.qat else False
    )
    channels, height, width = default_input_size(name)
    if args.input_size:
        height, width = args.input_size
    path = args.output_dir / f"{name}{'_qat' if args.qat else ''}.onnx"
    try:
        report = export_onnx(
            model,
            path,
            example_input=torch.randn(1, channels, height, width),
            opset=args.opset,
            simplify=not args.no_simplify,
            argmax=args.argmax,
            strict=not args.no_strict,
            model_name=name,
        )
    except ExportVerificationError as err:
        print(err, file=sys.stderr)
        return 1
    print(report)
    return 0 if report.ok else 1


def run_verify(args: argparse.Namespace) -> int:
    """Print the verification report of one file; 0 when clean, 1 with violations."""
    if not args.path.is_file():
        print(f"edgezoo verify: error: no ONNX file at {args.path}", file=sys.stderr)
        return 2
    report = verify_onnx(
        args.path,
        quantized=not args.float,
        input_clipped=not (args.float or args.no_input_clip),
    )
    print(report)
    return 0 if report.ok else 1
