"""The TI devices edgezoo exports for, and what each one imports (one table, used everywhere).

TI's edgeai-tidl-tools (release 11.0) name these SoCs; TDA4VM (J721E, AM68PA) is the one whose
TIDL imports QAT graphs with Clip ranges ("QAT [TDA4VM specific]"). The others import
prequantized ONNX QDQ graphs (`advanced_options:prequantized_model: 1`, 8-bit only) and support
asymmetric activations (`advanced_options:quantization_scale_type: 4`); TDA4VM/AM68PA does not.
"""

import difflib
from dataclasses import dataclass

from edgezoo.errors import QuantizationConfigError, UnknownTargetError

__all__ = [
    "CLIP_FORMAT",
    "DEFAULT_TARGET",
    "EXPORT_FORMATS",
    "QDQ_FORMAT",
    "TARGETS",
    "TargetDevice",
    "check_export_format",
    "check_scheme",
    "resolve_target",
]

CLIP_FORMAT = "clip"
QDQ_FORMAT = "qdq"
EXPORT_FORMATS = (CLIP_FORMAT, QDQ_FORMAT)
"""clip: float weights on the grid and Clip ranges (TI's QAT v1, TDA4VM). qdq: integer weights
and QuantizeLinear/DequantizeLinear pairs (TI's v2 QAT, prequantized import)."""


@dataclass(frozen=True)
class TargetDevice:
    """A TI SoC: the export format it takes and the quantization schemes it runs."""

    name: str
    soc: str
    """The SoC string of TI's tools (edgeai-tidl-tools' setup and model-zoo configs)."""
    aliases: tuple[str, ...]
    formats: tuple[str, ...]
    """Export formats it imports; the first is the default."""
    asymmetric: bool
    """Asymmetric activations and per-channel weights (quantization_scale_type 4)."""

    @property
    def default_format(self) -> str:
        return self.formats[0]


TARGETS: dict[str, TargetDevice] = {
    device.name: device
    for device in (
        TargetDevice("tda4vm", "am68pa", ("j721e", "am68pa"), (CLIP_FORMAT, QDQ_FORMAT), False),
        TargetDevice("am68a", "am68a", ("j721s2", "tda4al", "tda4vl"), (QDQ_FORMAT,), True),
        TargetDevice(
            "am69a",
            "am69a",
            ("j784s4", "tda4ap", "tda4vp", "tda4ah", "tda4vh"),
            (QDQ_FORMAT,),
            True,
        ),
        TargetDevice("am62a", "am62a", (), (QDQ_FORMAT,), True),
        TargetDevice("am67a", "am67a", ("j722s",), (QDQ_FORMAT,), True),
    )
}
DEFAULT_TARGET = "tda4vm"


def resolve_target(name: str | TargetDevice | None = None) -> TargetDevice:
    """The device for a name or alias (case-insensitive); None gives the default (TDA4VM)."""
    if isinstance(name, TargetDevice):
        return name
    key = (name or DEFAULT_TARGET).strip().lower()
    for device in TARGETS.values():
        if key == device.name or key in device.aliases:
            return device
    names = sorted({n for d in TARGETS.values() for n in (d.name, *d.aliases)})
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownTargetError(
        f"unknown target device {name!r}{hint}; edgezoo exports for {', '.join(TARGETS)} "
        f"(aliases: {', '.join(a for d in TARGETS.values() for a in d.aliases)})"
    )


def check_export_format(device: TargetDevice, export_format: str | None) -> str:
    """The format to export for a device (its default when None); refuse one it cannot import."""
    if export_format is None:
        return device.default_format
    if export_format not in EXPORT_FORMATS:
        raise QuantizationConfigError(
            f"export format {export_format!r} is not one of {', '.join(EXPORT_FORMATS)}"
        )
    if export_format not in device.formats:
        raise QuantizationConfigError(
            f"{device.name} does not import {export_format} graphs: TI documents QAT with Clip "
            f"ranges for TDA4VM only; export {device.name} as {', '.join(device.formats)}"
        )
    return export_format


def check_scheme(
    device: TargetDevice, per_channel_weights: bool, asymmetric_activations: bool
) -> None:
    """Refuse a quantization scheme the device does not run, saying which devices do."""
    wanted = [
        label
        for label, on in (
            ("per-channel weights", per_channel_weights),
            ("asymmetric activations", asymmetric_activations),
        )
        if on
    ]
    if wanted and not device.asymmetric:
        others = ", ".join(d.name for d in TARGETS.values() if d.asymmetric)
        raise QuantizationConfigError(
            f"{' and '.join(wanted)} are not supported on {device.name} (TIDL there is "
            f"power-of-two, per-tensor and symmetric); drop them for {device.name}, or target "
            f"one of {others}"
        )
