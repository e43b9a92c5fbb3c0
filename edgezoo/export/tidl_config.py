"""TIDL configuration files written beside an exported ONNX graph (same stem).

- `<stem>_tidl_compile_options.json`: options for ONNX Runtime's TIDL compilation provider
  (`provider_options`, ready to pass as is) with a note saying which quantization they assume.
- `<stem>_tidl_import.txt`: the TIDL import tool's `key = value` configuration.
- `<stem>_param.json`: a model configuration in the style of TI's edgeai-modelzoo (task_type,
  preprocess, session, postprocess).

A QAT export carries its activation ranges (Clip nodes) and grid weights, so TIDL is told not to
calibrate (accuracy_level 0 / calibrationOption 64, one frame). A float export gets TIDL's post-
training quantization settings instead, and every file says so.
"""

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import edgezoo
from edgezoo.tasks import CLASSIFICATION, IMAGENET_MEAN, IMAGENET_STD, SEGMENTATION

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PTQ_CALIBRATION_FRAMES",
    "PTQ_CALIBRATION_ITERATIONS",
    "TIDLInputSpec",
    "compile_options",
    "import_config_text",
    "model_config",
    "write_tidl_configs",
]

PTQ_CALIBRATION_FRAMES = 25
PTQ_CALIBRATION_ITERATIONS = 25
"""TIDL post-training calibration for float exports (TI's edgeai-benchmark uses 12 to 50)."""

_QAT_NOTE = (
    "QAT export: activation ranges are the graph's power-of-two Clip nodes and the weights are "
    "already on TIDL's per-tensor power-of-two grid, so TIDL must not calibrate "
    "(accuracy_level 0 = calibrationOption 64, bias-range clipping only; one frame)."
)
_PTQ_NOTE = (
    "Float export: no QAT ranges, so these are TIDL post-training quantization (PTQ) settings "
    f"(accuracy_level 1: activation and weight range calibration plus bias calibration over "
    f"{PTQ_CALIBRATION_FRAMES} frames and {PTQ_CALIBRATION_ITERATIONS} iterations); provide "
    "representative calibration images. Export a QAT model for Clip-range deployment."
)
_POST_PROC_TYPES = {CLASSIFICATION: 1, SEGMENTATION: 3}
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
        if self.task not in _POST_PROC_TYPES:
            raise ValueError(
                f"task must be one of {', '.join(_POST_PROC_TYPES)} to pick TIDL's postProcType, "
                f"got {self.task!r}"
            )
        if not (len(self.mean) == len(self.std) == self.channels):
            raise ValueError(
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


def compile_options(quantized: bool, artifacts_folder: str) -> dict[str, object]:
    """ONNX Runtime TIDL compilation options for a QAT (Clip-range) or a float (PTQ) graph."""
    options: dict[str, object] = {
        "artifacts_folder": artifacts_folder,
        "tensor_bits": 8,
        "debug_level": 0,
        "advanced_options:quantization_scale_type": 1,
    }
    if quantized:
        options |= {
            "accuracy_level": 0,
            "advanced_options:calibration_frames": 1,
            "advanced_options:calibration_iterations": 1,
        }
    else:
        options |= {
            "accuracy_level": 1,
            "advanced_options:calibration_frames": PTQ_CALIBRATION_FRAMES,
            "advanced_options:calibration_iterations": PTQ_CALIBRATION_ITERATIONS,
            "advanced_options:activation_clipping": 1,
            "advanced_options:weight_clipping": 1,
            "advanced_options:bias_calibration": 1,
        }
    return options


def import_config_text(onnx_name: str, spec: TIDLInputSpec, quantized: bool) -> str:
    """The TIDL import tool's configuration (`key = value` lines) for one exported graph."""
    stem = Path(onnx_name).stem
    note = _QAT_NOTE if quantized else _PTQ_NOTE
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
        ("numParamBits", 8),
        ("numFeatureBits", 8),
        ("quantizationStyle", _TIDL_QUANT_STYLE_P2),
        ("calibrationOption", _TIDL_CALIBRATION_QAT if quantized else _TIDL_CALIBRATION_PTQ),
        ("postProcType", _POST_PROC_TYPES[spec.task]),
    ]
    if not quantized:
        entries.append(("biasCalibrationIterations", PTQ_CALIBRATION_ITERATIONS))
    width = max(len(key) for key, _ in entries)
    lines = [
        f"# TIDL import configuration written by edgezoo {edgezoo.__version__} for {onnx_name}",
        *(f"# {line}" for line in textwrap.wrap(note, 96)),
        "# inData lists calibration images (one path per line, inFileFormat 2); "
        "inDataFormat 1 = RGB planar.",
        *(f"{key:<{width}} = {value}" for key, value in entries),
    ]
    return "\n".join(lines) + "\n"


def model_config(
    onnx_name: str, spec: TIDLInputSpec, quantized: bool, options: dict[str, object]
) -> dict[str, object]:
    """An edgeai-modelzoo style model configuration (task_type/preprocess/session/postprocess)."""
    postprocess: dict[str, object] = {"data_layout": "NCHW"}
    if spec.task == "segmentation":
        postprocess["with_argmax"] = not spec.argmax
    return {
        "task_type": spec.task,
        "quantization": _QAT_NOTE if quantized else _PTQ_NOTE,
        "generated_by": f"edgezoo {edgezoo.__version__}",
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


def write_tidl_configs(onnx_path: Path, spec: TIDLInputSpec, quantized: bool) -> dict[str, Path]:
    """Write the three TIDL files beside `onnx_path`; return them by role."""
    onnx_path = Path(onnx_path)
    stem, name = onnx_path.stem, onnx_path.name
    options = compile_options(quantized, artifacts_folder=f"{stem}_tidl_artifacts")
    paths = {
        "compile_options": onnx_path.with_name(f"{stem}_tidl_compile_options.json"),
        "import_config": onnx_path.with_name(f"{stem}_tidl_import.txt"),
        "model_config": onnx_path.with_name(f"{stem}_param.json"),
    }
    compile_file = {
        "quantization": _QAT_NOTE if quantized else _PTQ_NOTE,
        "provider": "TIDLCompilationProvider",
        "provider_options": options,
    }
    paths["compile_options"].write_text(json.dumps(compile_file, indent=2) + "\n")
    paths["import_config"].write_text(import_config_text(name, spec, quantized))
    paths["model_config"].write_text(
        json.dumps(model_config(name, spec, quantized, options), indent=2) + "\n"
    )
    return paths


def _size(value: int | Sequence[int]) -> int | list[int]:
    return value if isinstance(value, int) else list(value)
