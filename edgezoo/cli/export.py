"""`edgezoo export NAME -o DIR` and `edgezoo verify FILE.onnx`: TIDL-ready ONNX from the shell.

Exit status: 0 TIDL-ready / clean, 1 a TIDL rule is broken, 2 the command could not run
(a bad option, an unreadable file, untrained ranges, ...), with a one-line message.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from edgezoo.cli.arguments import (
    add_input_size_hw,
    add_quantization_scheme,
    add_weights_source,
    output_dir,
    positive_int,
    quantization_config,
)
from edgezoo.errors import ExportVerificationError, RunExistsError, UsageError
from edgezoo.export import export_onnx, verify_onnx
from edgezoo.export.tidl_config import tidl_config_paths
from edgezoo.fileio import folder_lock
from edgezoo.targets import EXPORT_FORMATS
from edgezoo.tidl.rules import EXPORT_OPSETS

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the export and verify subcommands."""
    _register_export(subparsers)
    _register_verify(subparsers)


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a model to a verified TIDL-ready ONNX file plus TIDL configs",
        description=(
            "Build the model (with --checkpoint or --pretrained weights), export it with the "
            "TorchScript ONNX exporter, simplify, verify TIDL's rules, check onnxruntime "
            "against PyTorch and write the TIDL compile options, import config and model "
            "config beside the ONNX file. Exits 0 when the export is TIDL-ready, 1 when it "
            "breaks a rule (nothing written unless --no-strict), 2 when it cannot run."
        ),
    )
    export.add_argument("name", help="model name or alias, as `edgezoo list` shows it")
    export.add_argument("-o", "--output-dir", required=True, type=output_dir, help="folder")
    export.add_argument(
        "--qat", action="store_true", help="export the QAT graph (Clip ranges, grid weights)"
    )
    add_weights_source(export, backbone=False)
    export.add_argument(
        "--num-classes", type=positive_int, help="classes of the head (default: the checkpoint's)"
    )
    add_input_size_hw(export)
    export.add_argument(
        "--opset",
        type=int,
        choices=EXPORT_OPSETS,
        help="ONNX opset (default 11, TI's QAT recipe; 13 for QDQ)",
    )
    add_quantization_scheme(export)
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        help="clip (TDA4VM's QAT Clip graph) or qdq (prequantized QuantizeLinear/"
        "DequantizeLinear graph); default: the target's",
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
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the .onnx and TIDL files already in -o (refused otherwise)",
    )
    export.add_argument(
        "--allow-uncalibrated",
        action="store_true",
        help="export a QAT model whose ranges never saw data (their clips are the initial "
        "+/-8): for graph tests only, never for deployment",
    )
    export.set_defaults(func=run_export)


def _register_verify(subparsers: argparse._SubParsersAction) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="check an ONNX file against TIDL's import rules",
        description=(
            "List every TIDL rule the graph breaks, with the node name. QAT rules (power-of-"
            "two Clip ranges covering every Conv/Gemm/Add/Concat output, grid weights, a "
            "clipped input, trained ranges) apply unless --float. Exits 0 when clean, 1 with "
            "violations, 2 when the file cannot be read."
        ),
    )
    verify.add_argument("path", help="the .onnx file")
    verify.add_argument(
        "--float", action="store_true", help="a float model that TIDL calibrates (PTQ rules)"
    )
    verify.add_argument(
        "--no-input-clip",
        action="store_true",
        help="the QAT model was trained with quantize_input=False",
    )
    verify.add_argument(
        "--meta-arch",
        type=Path,
        metavar="PROTOTXT",
        help="a detector's meta-architecture prototxt to check against the graph (default: "
        "<stem>_meta_arch.prototxt beside it, when there)",
    )
    verify.add_argument(
        "--allow-uncalibrated",
        action="store_true",
        help="do not report ranges the export recorded as untrained (graph tests only)",
    )
    verify.add_argument(
        "--batches",
        type=positive_int,
        default=8,
        help="QDQ graphs: seeded random images to run in onnxruntime's int8 kernels (default 8)",
    )
    verify.set_defaults(func=run_verify)


def run_export(args: argparse.Namespace) -> int:
    """Export one model; print the report; 0 when TIDL-ready, 1 when a rule is broken."""
    from edgezoo.registry import default_input_size, get_model, resolve_name

    name = resolve_name(args.name)
    if getattr(args, "layer_bits", None) and not args.qat:
        raise UsageError("--layer-bits gives a QAT checkpoint's layers their widths: add --qat")
    _check_checkpoint_classes(name, args)
    pretrained = args.checkpoint or args.pretrained
    if not pretrained:
        logger.warning(
            "%s: exporting randomly initialised weights; pass --checkpoint FILE or --pretrained",
            name,
        )
    model = get_model(
        name,
        pretrained=pretrained,
        num_classes=args.num_classes,
        qat="test" if args.qat else False,
        config=quantization_config(args) if args.qat else None,
    )
    channels, height, width = default_input_size(name)
    if args.input_size:
        height, width = args.input_size
    path = args.output_dir / f"{name}{'_qat' if args.qat else ''}.onnx"
    with folder_lock(args.output_dir, "edgezoo export"):
        _refuse_to_replace([path, *tidl_config_paths(path)], args.overwrite)
        return _export(args, model, path, name, (channels, height, width))


def _export(args: argparse.Namespace, model: Any, path: Path, name: str, shape: tuple) -> int:
    """Export and print the report (the output folder is held by this process)."""
    import torch

    try:
        report = export_onnx(
            model,
            path,
            example_input=torch.randn(1, *shape),
            opset=args.opset,
            simplify=not args.no_simplify,
            argmax=args.argmax,
            strict=not args.no_strict,
            model_name=name,
            allow_uncalibrated=args.allow_uncalibrated,
            export_format=args.format,
            target=args.target,
        )
    except ExportVerificationError as err:
        print(err, file=sys.stderr)
        return 1
    print(report)
    return 0 if report.ok else 1


def _check_checkpoint_classes(name: str, args: argparse.Namespace) -> None:
    """A run's checkpoint must fit exactly: another --num-classes would export a random head."""
    if args.checkpoint is None or args.num_classes is None:
        return
    from edgezoo.registry import checkpoint_classes
    from edgezoo.weights import read_state_dict

    classes = checkpoint_classes(name, read_state_dict(args.checkpoint))
    if classes is not None and classes != args.num_classes:
        raise UsageError(
            f"--num-classes {args.num_classes} does not match {args.checkpoint}, whose head has "
            f"{classes} classes: the export would carry a randomly initialised head. Drop "
            "--num-classes (the checkpoint's is used), or pass a checkpoint trained for "
            f"{args.num_classes} classes"
        )


def _refuse_to_replace(paths: list[Path], overwrite: bool) -> None:
    """Stop before any work when a file the export would write is already there."""
    present = [str(path) for path in paths if path.exists()]
    if present and not overwrite:
        raise RunExistsError(
            f"{', '.join(present)} already exist(s); pass --overwrite to replace them, or "
            "choose another -o folder"
        )
    if any(path.is_dir() for path in paths):
        raise RunExistsError(
            f"{', '.join(str(p) for p in paths if p.is_dir())} is a folder where the export "
            "writes a file; remove it or choose another -o folder"
        )


def _meta_arch_text(given: Path | None) -> str | None:
    """The prototxt --meta-arch names (None: verify_onnx reads the one beside the graph)."""
    if given is None:
        return None
    try:
        return given.read_text()
    except OSError as err:
        message = f"cannot read --meta-arch {given} ({err}); pass a readable prototxt"
        raise UsageError(message) from err


def run_verify(args: argparse.Namespace) -> int:
    """Print the verification report of one file (and, for a QDQ graph, how onnxruntime's
    int8 kernels agree with the graph's QDQ semantics); 0 when clean, 1 with violations."""
    from edgezoo.export.qdq_check import graph_agreement
    from edgezoo.onnxgraph import load_onnx

    report = verify_onnx(
        args.path,
        quantized=not args.float,
        input_clipped=not (args.float or args.no_input_clip),
        allow_uncalibrated=args.allow_uncalibrated,
        meta_arch=_meta_arch_text(args.meta_arch),
    )
    print(report)
    if report.ok and "QuantizeLinear" in report.node_counts:
        print(graph_agreement(load_onnx(args.path), args.batches))
    return 0 if report.ok else 1
