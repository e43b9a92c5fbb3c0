"""TIDL configuration files written beside an exported ONNX graph (same stem), per device.

- `<stem>_tidl_compile_options.json`: options for ONNX Runtime's TIDL compilation provider
  (`provider_options`, ready to pass as is), only the ones that take effect for the graph and
  the target device, each with its documented meaning, and a note on the quantization.
- `<stem>_tidl_import.txt` (TDA4VM): the TIDL import tool's `key = value` configuration.
- `<stem>_param.json`: a model configuration in the style of TI's edgeai-modelzoo (task_type,
  target_device, preprocess, session, postprocess).
- `<stem>_meta_arch.prototxt` (detectors): the meta-architecture TIDL adds after the heads
  (prior boxes or anchors, box decoding, NMS), named by object_detection:meta_layers_names_list.

A QAT Clip graph carries its ranges and grid weights, so TIDL is told not to calibrate
(accuracy_level 0 / calibrationOption 64); a QDQ graph carries its scales and zero points
(prequantized_model 1). A float export gets TIDL's post-training quantization settings
instead (accuracy_level 1 with calibration frames), and every file says so. Power-of-two scales
(quantization_scale_type 1) are for TDA4VM; the other devices get 4 (asymmetric, per-channel)
for float graphs, as TI recommends, and for QDQ graphs that use those schemes.
"""

import json
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgezoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from edgezoo.errors import UsageError
from edgezoo.export.meta_arch_files import META_ARCH_SUFFIX
from edgezoo.fileio import atomic_path
from edgezoo.targets import (
    CLIP_FORMAT,
    DEFAULT_TARGET,
    QDQ_FORMAT,
    TargetDevice,
    resolve_target,
)
from edgezoo.tasks import get_task
from edgezoo.version import __version__

__all__ = [
    "OPTION_MEANINGS",
    "PTQ_CALIBRATION_FRAMES",
    "PTQ_CALIBRATION_ITERATIONS",
    "TIDLCompilation",
    "TIDLInputSpec",
    "compile_options",
    "import_config_text",
    "model_config",
    "tidl_config_paths",
    "write_tidl_configs",
]

PTQ_CALIBRATION_FRAMES = 25
PTQ_CALIBRATION_ITERATIONS = 25
"""TIDL post-training calibration for float exports (TI's edgeai-benchmark uses 12 to 50)."""

_QAT_NOTE = (
    "QAT export: activation ranges are the graph's power-of-two Clip nodes and the weights are "
    "already on TIDL's per-tensor power-of-two grid, so TIDL must not calibrate "
    "(accuracy_level 0 = calibrationOption 64, bias-range clipping only)."
)
_PTQ_NOTE = (
    "Float export: no QAT ranges, so these are TIDL post-training quantization (PTQ) settings "
    f"(accuracy_level 1: activation and weight range calibration plus bias calibration over "
    f"{PTQ_CALIBRATION_FRAMES} frames and {PTQ_CALIBRATION_ITERATIONS} iterations); provide "
    "representative calibration images. Export a QAT model for Clip-range deployment."
)
_QDQ_NOTE = (
    "QDQ export (prequantized): every scale and zero point is in the graph's QuantizeLinear / "
    "DequantizeLinear nodes and the weights and biases are integers, so TIDL reads them "
    "(advanced_options:prequantized_model 1) and does not calibrate (accuracy_level 0)."
)
_SCALE_TYPE_POWER_OF_TWO = 1
_SCALE_TYPE_AFFINE = 4
_TIDL_CALIBRATION_QAT = 64  # bias-range clipping only
_TIDL_CALIBRATION_PTQ = 7  # activation range + weight range + bias calibration
_TIDL_QUANT_STYLE_P2 = 3  # per-tensor power-of-two scales


@dataclass(frozen=True)
class TIDLInputSpec:
    """What TIDL needs to know about the model's input and task to import and run it.

    mean/std are the torchvision-style normalisation of 0..1 pixels; resize/crop describe the
    preprocessing that produces the (height, width) input.
    """

    channels: int
    height: int
    width: int
    task: str
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    resize: int | Sequence[int] | None = None
    crop: int | Sequence[int] | None = None
    argmax: bool = False

    def __post_init__(self) -> None:
        get_task(self.task)  # UsageError naming the known tasks
        if not (len(self.mean) == len(self.std) == self.channels):
            raise UsageError(
                f"mean {list(self.mean)} and std {list(self.std)} need one value per input "
                f"channel ({self.channels})"
            )

    @property
    def pixel_mean(self) -> list[float]:
        """The mean on 0..255 pixels (TIDL's inMean)."""
        return [round(m * 255.0, 6) for m in self.mean]

    @property
    def pixel_scale(self) -> list[float]:
        """1 / (std * 255): the scale applied after subtracting the mean (TIDL's inScale)."""
        return [round(1.0 / (s * 255.0), 6) for s in self.std]


@dataclass(frozen=True)
class TIDLCompilation:
    """What a graph's TIDL options describe: the device, the graph's format and quantization.

    quantized: a QAT graph (its ranges are in the graph) or a float one (TIDL calibrates it).
    tensor_bits: the graph's bit width (8 or 16; QDQ graphs are 8-bit). affine: the graph has
    per-channel weights or affine (zero-point) activations (quantization_scale_type 4).
    features_16bit / params_16bit: the layers (TIDL's names: output tensors) whose outputs /
    weights a mixed-precision graph holds in 16 bits. meta_arch_type / meta_arch_file: a
    detector's TIDL meta-architecture and its prototxt's file name (beside the graph).
    """

    target: TargetDevice = field(default_factory=resolve_target)
    quantized: bool = True
    export_format: str = CLIP_FORMAT
    tensor_bits: int = 8
    affine: bool = False
    features_16bit: tuple[str, ...] = ()
    params_16bit: tuple[str, ...] = ()
    meta_arch_type: int | None = None
    meta_arch_file: str | None = None

    @property
    def scale_type(self) -> int:
        """advanced_options:quantization_scale_type: 1 power of two, 4 asymmetric/per-channel."""
        if self.quantized and self.export_format == QDQ_FORMAT:
            return _SCALE_TYPE_AFFINE if self.affine else _SCALE_TYPE_POWER_OF_TWO
        return _SCALE_TYPE_AFFINE if self.target.asymmetric else _SCALE_TYPE_POWER_OF_TWO

    @property
    def note(self) -> str:
        if not self.quantized:
            return _PTQ_NOTE
        return _QDQ_NOTE if self.export_format == QDQ_FORMAT else _QAT_NOTE


OPTION_MEANINGS = {
    "artifacts_folder": "where TIDL writes the compiled model (required)",
    "tensor_bits": "bit width of TIDL's tensors and weights (8 or 16)",
    "accuracy_level": (
        "0: basic calibration (min/max ranges; for QAT and QDQ graphs the ranges come from the "
        "graph), 1: advanced bias calibration over calibration_frames"
    ),
    "advanced_options:quantization_scale_type": (
        "1: power-of-2 scales, 4: asymmetric activations with per-channel weights"
    ),
    "advanced_options:prequantized_model": (
        "1: read scales and zero points from the ONNX QDQ graph and skip calibration"
    ),
    "advanced_options:calibration_frames": (
        "frames for calibration (used at accuracy_level 1; at least 10 recommended)"
    ),
    "advanced_options:calibration_iterations": "bias calibration iterations (accuracy_level 1)",
    "advanced_options:output_feature_16bit_names_list": (
        "layers (output tensor names) whose outputs TIDL computes in 16 bits"
    ),
    "advanced_options:params_16bit_names_list": (
        "layers (output tensor names) whose weights and biases TIDL holds in 16 bits"
    ),
    "object_detection:meta_arch_type": (
        "the detector's meta-architecture (3: ONNX SSD, 6: YOLOX/v5/v7), whose box decoding "
        "and NMS TIDL runs after the graph"
    ),
    "object_detection:meta_layers_names_list": (
        "the prototxt describing the head outputs, prior boxes and detection output"
    ),
}
"""What each compile option edgezoo writes means (edgeai-tidl-tools, examples/osrt_python)."""


def compile_options(
    compilation: "TIDLCompilation | bool", artifacts_folder: str
) -> dict[str, object]:
    """The ONNX Runtime TIDL compilation options that take effect for one graph and device.

    A bool is read as TIDLCompilation(quantized=...) for TDA4VM. Calibration frames and
    iterations are written only for float graphs (accuracy_level 1; TIDL ignores them at 0).
    """
    if isinstance(compilation, bool):
        compilation = TIDLCompilation(quantized=compilation)
    options: dict[str, object] = {
        "artifacts_folder": artifacts_folder,
        "tensor_bits": compilation.tensor_bits,
    }
    if not compilation.quantized:
        options |= {
            "accuracy_level": 1,
            "advanced_options:calibration_frames": PTQ_CALIBRATION_FRAMES,
            "advanced_options:calibration_iterations": PTQ_CALIBRATION_ITERATIONS,
        }
    else:
        options["accuracy_level"] = 0
        if compilation.export_format == QDQ_FORMAT:
            options["advanced_options:prequantized_model"] = 1
    options["advanced_options:quantization_scale_type"] = compilation.scale_type
    if compilation.features_16bit:
        names = ", ".join(compilation.features_16bit)
        options["advanced_options:output_feature_16bit_names_list"] = names
    if compilation.params_16bit:
        options["advanced_options:params_16bit_names_list"] = ", ".join(compilation.params_16bit)
    if compilation.meta_arch_type is not None:
        options["object_detection:meta_arch_type"] = compilation.meta_arch_type
        options["object_detection:meta_layers_names_list"] = compilation.meta_arch_file
    return options


def import_config_text(
    onnx_name: str, spec: TIDLInputSpec, compilation: "TIDLCompilation | bool"
) -> str:
    """The TIDL import tool's configuration (`key = value` lines) for a TDA4VM graph."""
    if isinstance(compilation, bool):
        compilation = TIDLCompilation(quantized=compilation)
    quantized = compilation.quantized
    stem = Path(onnx_name).stem
    frames = 1 if quantized else PTQ_CALIBRATION_FRAMES
    entries: list[tuple[str, object]] = [
        ("modelType", 2),
        ("inputNetFile", f'"{onnx_name}"'),
        ("outputNetFile", f'"{stem}_tidl/tidl_net.bin"'),
        ("outputParamsFile", f'"{stem}_tidl/tidl_io_"'),
        ("inDataNorm", 1),
        ("inMean", " ".join(f"{v:g}" for v in spec.pixel_mean)),
        ("inScale", " ".join(f"{v:g}" for v in spec.pixel_scale)),
        ("inDataFormat", 1),
        ("inWidth", spec.width),
        ("inHeight", spec.height),
        ("inNumChannels", spec.channels),
        ("inData", f'"{stem}_calibration_images.txt"'),
        ("inFileFormat", 2),
        ("numFrames", frames),
        ("numParamBits", compilation.tensor_bits),
        ("numFeatureBits", compilation.tensor_bits),
        ("quantizationStyle", _TIDL_QUANT_STYLE_P2),
        ("calibrationOption", _TIDL_CALIBRATION_QAT if quantized else _TIDL_CALIBRATION_PTQ),
        ("postProcType", get_task(spec.task).tidl_post_proc_type),
    ]
    if not quantized:
        entries.append(("biasCalibrationIterations", PTQ_CALIBRATION_ITERATIONS))
    if compilation.features_16bit:
        entries.append(("outFeature16bitNamesList", f'"{",".join(compilation.features_16bit)}"'))
    if compilation.params_16bit:
        entries.append(("params16bitNamesList", f'"{",".join(compilation.params_16bit)}"'))
    if compilation.meta_arch_type is not None:
        entries.append(("metaArchType", compilation.meta_arch_type))
        entries.append(("metaLayersNamesList", f'"{compilation.meta_arch_file}"'))
    width = max(len(key) for key, _ in entries)
    lines = [
        f"# TIDL import configuration written by edgezoo {__version__} for {onnx_name}",
        f"# target device: {compilation.target.name} (SoC {compilation.target.soc})",
        *(f"# {line}" for line in textwrap.wrap(compilation.note, 96)),
        "# inData lists calibration images (one path per line, inFileFormat 2); "
        "inDataFormat 1 = RGB planar.",
        *(f"{key:<{width}} = {value}" for key, value in entries),
    ]
    return "\n".join(lines) + "\n"


def model_config(
    onnx_name: str,
    spec: TIDLInputSpec,
    compilation: "TIDLCompilation | bool",
    options: dict[str, object],
) -> dict[str, object]:
    """An edgeai-modelzoo style model configuration (task_type/preprocess/session/postprocess)."""
    if isinstance(compilation, bool):
        compilation = TIDLCompilation(quantized=compilation)
    postprocess: dict[str, object] = {
        "data_layout": "NCHW",
        **get_task(spec.task).model_config_postprocess(spec.argmax),
    }
    return {
        "task_type": spec.task,
        "target_device": compilation.target.soc,
        "quantization": compilation.note,
        "generated_by": f"edgezoo {__version__}",
        "preprocess": {
            "resize": _size(spec.resize) if spec.resize is not None else [spec.height, spec.width],
            "crop": _size(spec.crop) if spec.crop is not None else [spec.height, spec.width],
            "data_layout": "NCHW",
            "resize_with_pad": False,
            "reverse_channels": False,
        },
        "session": {
            "session_name": "onnxrt",
            "model_path": onnx_name,
            "input_data_layout": "NCHW",
            "input_mean": spec.pixel_mean,
            "input_scale": spec.pixel_scale,
            "input_optimization": True,
            "runtime_options": options,
        },
        "postprocess": postprocess,
    }


def write_tidl_configs(
    onnx_path: Path,
    spec: TIDLInputSpec,
    quantized: bool = True,
    compilation: TIDLCompilation | None = None,
    meta_arch: str | None = None,
) -> dict[str, Path]:
    """Write the TIDL files beside `onnx_path` (compilation: the device and the graph's format,
    default TDA4VM with `quantized`; meta_arch: a detector's prototxt text, which the options
    then name); return them by role. The import-tool file is written for TDA4VM, whose TIDL-RT
    import tool edgezoo's keys describe."""
    compilation = compilation or TIDLCompilation(quantized=quantized)
    onnx_path = Path(onnx_path)
    stem, name = onnx_path.stem, onnx_path.name
    texts: dict[str, str] = {}
    paths: dict[str, Path] = {}
    if meta_arch is not None:
        paths["meta_arch"] = onnx_path.with_name(stem + META_ARCH_SUFFIX)
        texts["meta_arch"] = meta_arch
        compilation = replace(compilation, meta_arch_file=paths["meta_arch"].name)
    options = compile_options(compilation, artifacts_folder=f"{stem}_tidl_artifacts")
    paths["compile_options"] = onnx_path.with_name(f"{stem}_tidl_compile_options.json")
    paths["model_config"] = onnx_path.with_name(f"{stem}_param.json")
    compile_file = {
        "target_device": compilation.target.name,
        "soc": compilation.target.soc,
        "quantization": compilation.note,
        "provider": "TIDLCompilationProvider",
        "provider_options": options,
        "option_meanings": {key: OPTION_MEANINGS[key] for key in options},
    }
    texts["compile_options"] = json.dumps(compile_file, indent=2) + "\n"
    if compilation.target.name == DEFAULT_TARGET and compilation.export_format == CLIP_FORMAT:
        paths["import_config"] = onnx_path.with_name(f"{stem}_tidl_import.txt")
        texts["import_config"] = import_config_text(name, spec, compilation)
    config = model_config(name, spec, compilation, options)
    texts["model_config"] = json.dumps(config, indent=2) + "\n"
    for role, text in texts.items():
        with atomic_path(paths[role]) as partial:
            partial.write_text(text)
    return paths


def tidl_config_paths(onnx_path: str | os.PathLike) -> list[Path]:
    """Every file write_tidl_configs may write beside onnx_path (to check before writing)."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.stem
    suffixes = ("_tidl_compile_options.json", "_param.json", "_tidl_import.txt", META_ARCH_SUFFIX)
    return [onnx_path.with_name(stem + suffix) for suffix in suffixes]


def _size(value: int | Sequence[int]) -> int | list[int]:
    return value if isinstance(value, int) else list(value)
