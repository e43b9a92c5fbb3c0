"""`edgezoo simulate FILE.onnx`: TIDL's integer arithmetic against QAT's, layer by layer."""

import argparse

from edgezoo.cli.arguments import DATA_HELP, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the simulate subcommand."""
    parser = subparsers.add_parser(
        "simulate",
        help="run an exported QAT graph in TIDL's integer arithmetic, layer by layer",
        description=(
            "Run the graph in TIDL's power-of-two integer arithmetic and in QAT's float32 "
            "arithmetic on the same inputs and report, for every layer, the largest difference "
            "in output steps and the share of elements that differ. Inputs: --data images "
            "(normalised as the model's weights expect), else seeded random ones. Exits 0 when "
            "every layer agrees exactly, 1 when some layer differs."
        ),
    )
    parser.add_argument("path", help="the exported .onnx file (a QAT Clip graph)")
    parser.add_argument("--data", help=f"images to run: {DATA_HELP} (default: random inputs)")
    parser.add_argument("--batches", type=positive_int, default=4, help="batches (default 4)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    parser.add_argument(
        "--bitwidth", type=positive_int, help="bit width (default: what the export recorded)"
    )
    parser.add_argument(
        "--save-layers",
        metavar="FILE.npz",
        help=(
            "also write the integers of every tensor on an activation grid for the first "
            "batch, by ONNX tensor name, to compare with TIDL's fixed-point layer traces"
        ),
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a --save-layers file that exists"
    )
    parser.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    """Print the per-layer parity report; 0 when exact, 1 when a layer differs."""
    from edgezoo.onnxgraph import load_onnx
    from edgezoo.simulation import parity_report
    from edgezoo.simulation.inputs import graph_batches, graph_input_shape

    _check_save_layers(args)
    proto = load_onnx(args.path)
    graph_input_shape(proto)  # its size first: the plainest message for a graph too large
    check_runnable_graph(proto, args.path)
    first = []  # batches stream through; the first is kept for --save-layers

    def streamed():
        for batch in graph_batches(proto, args.data, args.batches, args.batch_size):
            first[:] = first or [batch]
            yield batch

    report = parity_report(proto, streamed(), bitwidth=args.bitwidth)
    print(report)
    if args.save_layers:
        _save_layers(proto, first[0], args.bitwidth, args.save_layers)
    return 0 if report.exact else 1


def check_runnable_graph(proto, path) -> None:
    """Refuse a graph that breaks a structural rule (verify's STRUCTURAL_RULES: bad bounds, no
    outputs, an opset or IR version nothing imports, repeated initializers, ...), which a
    simulation would otherwise report as agreeing."""
    from edgezoo.errors import SimulationError
    from edgezoo.export.verify import structural_violations

    broken = structural_violations(proto)
    if broken:
        listed = "; ".join(str(v) for v in broken[:3])
        raise SimulationError(
            f"{path} is not a graph TIDL (or its simulation) can run as written: {listed}. "
            "`edgezoo verify` lists every problem; re-export the model"
        )


def _check_save_layers(args: argparse.Namespace) -> None:
    """Refuse a --save-layers path that is the model itself, a folder, or (without
    --overwrite) an existing file, before any work."""
    from pathlib import Path

    from edgezoo.errors import RunExistsError

    if not args.save_layers:
        return
    target = Path(args.save_layers).expanduser()
    if target.resolve() == Path(args.path).expanduser().resolve():
        raise RunExistsError(
            f"--save-layers {target} is the model being simulated; name another file"
        )
    if target.is_dir():
        raise RunExistsError(f"--save-layers {target} is a folder; name a .npz file")
    if target.exists() and not args.overwrite:
        raise RunExistsError(
            f"{target} already exists; pass --overwrite to replace it or name another file"
        )


def _save_layers(proto, batch, bitwidth: int | None, path: str) -> None:
    """Write each grid tensor's integers (and its scale exponent) for one batch."""
    import numpy as np

    from edgezoo.fileio import atomic_path
    from edgezoo.simulation import TIDLSimulator

    layers = TIDLSimulator(proto, bitwidth).layers(batch)
    arrays = {}
    for name, tensor in layers.items():
        arrays[name] = tensor.integers
        arrays[f"{name}.exponent"] = np.asarray(tensor.exponent)
    with atomic_path(path) as partial, open(partial, "wb") as handle:
        np.savez(handle, **arrays)
    print(f"wrote the integers of {len(layers)} tensors to {path}")
