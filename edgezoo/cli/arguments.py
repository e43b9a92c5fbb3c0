"""Argument types and shared options of the `edgezoo` subcommands, checked when parsed.

A bad value stops the command before any work with argparse's one-line error and exit status
2, naming the option and what it accepts.
"""

import argparse
import json
import math
from pathlib import Path

DATA_HELP = (
    "'embedded' (the Fashion-MNIST subset shipped with edgezoo), 'fashion-mnist' (the full set "
    "at /usr/share/datasets/fashion-mnist), 'composite' / 'composite-detection' (COMPOSITE "
    "segmentation / detection scenes of Fashion-MNIST items), or a directory: Fashion-MNIST idx "
    "files, or train/ and val/ sub-folders (classification: one folder per class; "
    "segmentation: images/ + masks/; detection: images/ + annotations.json in COCO format)"
)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


MAX_INPUT_SIZE = 8192
"""Largest input height or width the commands accept (a 3 x 8192 x 8192 batch of one is 800 MB
in float32; anything larger is a typo, not an image TIDL runs)."""
MAX_SEED = 2**32 - 1
"""Largest seed: numpy's generators take 32-bit seeds."""


def input_size(text: str) -> int:
    """An image height or width in [1, MAX_INPUT_SIZE]."""
    return _int_at_least(text, 1, MAX_INPUT_SIZE)


def seed(text: str) -> int:
    """A seed in [0, 2^32 - 1]."""
    return _int_at_least(text, 0, MAX_SEED)


def _int_at_least(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates)."""
    return _finite_float(text, positive=True)


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (weight decay)."""
    return _finite_float(text, positive=False)


def _finite_float(text: str, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a finite number > 0" if positive else "a finite number >= 0"
        raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}")
    return value


def add_input_size_hw(parser: argparse.ArgumentParser) -> None:
    """--input-size H W (each >= 1)."""
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=input_size,
        metavar=("H", "W"),
        help="input height and width (default: the model's default input size)",
    )


def add_weights_source(parser: argparse.ArgumentParser, *, backbone: bool) -> None:
    """--pretrained [TAG_OR_PATH] | --pretrained-backbone [TAG] | --checkpoint FILE."""
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=False,
        metavar="TAG_OR_PATH",
        help="manifest weights (default tag, or a tag / file); a head of another size is "
        "re-initialised",
    )
    if backbone:
        weights.add_argument(
            "--pretrained-backbone",
            nargs="?",
            const=True,
            default=False,
            metavar="TAG_OR_PATH",
            help="ImageNet weights (a tag) or a classifier checkpoint (a path) for a "
            "segmentation or detection model's backbone",
        )
    weights.add_argument(
        "--checkpoint",
        type=Path,
        help="a run's last.pth / best.pth or a state_dict of this model (must fit exactly)",
    )


def output_dir(text: str) -> Path:
    """A folder to write into: missing (it is created) or a folder, never a file."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder; choose a folder")
    return path


def add_quantization_scheme(parser: argparse.ArgumentParser) -> None:
    """--target, --per-channel-weights, --asymmetric-activations, --activation-rounding,
    --bias-rule: the device and its scheme."""
    from edgezoo.quantization.grid import ACTIVATION_ROUNDINGS, BIAS_RULES
    from edgezoo.targets import TARGETS

    parser.add_argument(
        "--target",
        help=f"the TI device ({', '.join(TARGETS)}; default tda4vm): sets the export format, "
        "the compile options and the schemes allowed",
    )
    parser.add_argument(
        "--per-channel-weights",
        action="store_true",
        help="a power-of-two weight scale per output channel (QDQ devices, not tda4vm)",
    )
    parser.add_argument(
        "--asymmetric-activations",
        action="store_true",
        help="affine activation ranges with zero points (QDQ devices, not tda4vm)",
    )
    parser.add_argument(
        "--activation-rounding",
        choices=ACTIVATION_ROUNDINGS,
        help="how activations round (default: half_up for tda4vm Clip graphs, half_even for QDQ)",
    )
    parser.add_argument(
        "--layer-bits",
        type=layer_bits_option,
        metavar="NAME=BITS,...|FILE",
        help="per-layer widths: module names or globs with 8 or 16 ('layer1.*=16,fc=16'; a "
        "bare name means 16), or the JSON file `edgezoo mixed-precision` writes",
    )
    parser.add_argument(
        "--bias-rule",
        choices=BIAS_RULES,
        help="how the device holds biases (default: ti_v1 for tda4vm Clip graphs, joint for QDQ; "
        "a QDQ graph for tda4vm needs --activation-rounding half_even --bias-rule joint)",
    )


def layer_bits_option(text: str) -> dict[str, int]:
    """--layer-bits: 'name=16,glob.*=16' (a bare name: 16) or a JSON file holding
    {"layer_bits": {...}} (what `edgezoo mixed-precision` writes) or the mapping itself."""
    path = Path(text).expanduser()
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise argparse.ArgumentTypeError(
                f"{path} is not a JSON layer-bits file: {err}"
            ) from err
        data = data.get("layer_bits", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise argparse.ArgumentTypeError(
                f"{path} holds no mapping of module names to 8 or 16 (layer_bits)"
            )
        return data
    widths = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, bits = part.partition("=")
        if bits and not bits.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"--layer-bits {part!r}: the width after '=' is 8 or 16 ('layer1.*=16')"
            )
        widths[name.strip()] = int(bits) if bits else 16
    if not widths:
        raise argparse.ArgumentTypeError("--layer-bits needs NAME=BITS pairs or a JSON file")
    return widths


def quantization_config(args: argparse.Namespace, **settings):
    """The QuantizationConfig the scheme options ask for (settings: more of its fields)."""
    from edgezoo.quantization import QuantizationConfig

    return QuantizationConfig(
        target=getattr(args, "target", None),
        per_channel_weights=getattr(args, "per_channel_weights", False),
        asymmetric_activations=getattr(args, "asymmetric_activations", False),
        activation_rounding=getattr(args, "activation_rounding", None),
        bias_rule=getattr(args, "bias_rule", None),
        learn_ranges=getattr(args, "learn_ranges", False),
        layer_bits=getattr(args, "layer_bits", None),
        **settings,
    )
