"""What an export records in the graph (producer, device, quantization, normalisation) and
the TIDL input description it writes beside it."""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from torch import Tensor

from edgezoo.export.plan import ExportPlan
from edgezoo.export.tidl_config import TIDLInputSpec
from edgezoo.export.verify_ranges import input_range, normalised_input_range
from edgezoo.quantization import GraphQuantization
from edgezoo.targets import QDQ_FORMAT
from edgezoo.tasks import task_of_graph
from edgezoo.tidl import rules
from edgezoo.tidl.tensor_bits import TensorBits
from edgezoo.version import __version__

__all__ = ["input_spec", "record_normalisation", "stamp"]

logger = logging.getLogger(__name__)


def stamp(
    proto: onnx.ModelProto,
    name: str,
    quantized: bool,
    untrained: int,
    settings: GraphQuantization | None,
    plan: ExportPlan,
    widths: TensorBits | None = None,
) -> None:
    """Record what wrote the graph, for which device, how it is meant to be imported and
    quantized (its widths per tensor: `widths`, given with `settings`), and how many of its
    ranges are untrained."""
    proto.producer_name = "edgezoo"
    proto.producer_version = __version__
    proto.graph.name = name
    kind = "float-ptq"
    if quantized:
        kind = "qat-qdq" if plan.export_format == QDQ_FORMAT else "qat-clip-ranges"
    props = {"edgezoo.quantization": kind, rules.TARGET_PROP: plan.target.name}
    if settings is not None:
        props.update(widths.properties())
        props[rules.ROUNDING_PROP] = settings.activation_rounding
        props[rules.EVAL_PRECISION_PROP] = "float64" if settings.exact_eval else "float32"
        props[rules.ACTIVATION_SCALES_PROP] = settings.activation_scales
        props[rules.BIAS_RULE_PROP] = settings.bias_rule
    if untrained:
        props[rules.UNTRAINED_RANGES_PROP] = str(untrained)
    onnx.helper.set_model_props(proto, props)


def record_normalisation(proto: onnx.ModelProto, spec: TIDLInputSpec) -> None:
    """Record the input normalisation the TIDL files declare, for verify_onnx's input check,
    and log an input range that cuts its tails."""
    props = rules.graph_properties(proto)
    props[rules.INPUT_MEAN_PROP] = " ".join(f"{v:g}" for v in spec.mean)
    props[rules.INPUT_STD_PROP] = " ".join(f"{v:g}" for v in spec.std)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    _warn_about_inputs(proto)


def _warn_about_inputs(proto: onnx.ModelProto) -> None:
    """Log what verify does not refuse but changes results: an input range that cuts the tails
    of the normalised inputs."""
    normalised, found = normalised_input_range(proto), input_range(proto)
    if normalised is not None and found is not None:
        (low, high), (_, clip_low, clip_high) = normalised, found
        if clip_low > low or clip_high < high:
            logger.warning(
                "the input range (%.3g, %.3g) cuts the normalised inputs (%.3g, %.3g): the "
                "darkest/brightest pixels saturate on the device",
                clip_low,
                clip_high,
                low,
                high,
            )


def input_spec(
    example: Tensor,
    reference: Tensor,
    info: Mapping[str, Any] | None,
    task: str | None,
    preprocessing: Mapping[str, Any] | None,
    argmax: bool,
) -> TIDLInputSpec:
    """The TIDL input description from explicit values, the manifest, or defaults."""
    channels, height, width = (int(v) for v in example.shape[1:])
    if preprocessing is None and info is not None:
        preprocessing = info.get("preprocessing") or _default_weights_preprocessing(info)
    preprocessing = dict(preprocessing or {})
    if task is None:
        task = info["task"] if info else task_of_graph(reference.dim()).name
    resize, crop = preprocessing.get("resize"), preprocessing.get("crop")
    final = crop if crop is not None else resize
    if final is None or _as_hw(final) != (height, width):
        # Preprocessing meant for another input size: resize straight to the exported size.
        resize, crop = None, None
    extra = {k: preprocessing[k] for k in ("mean", "std") if k in preprocessing}
    return TIDLInputSpec(
        channels, height, width, task, resize=resize, crop=crop, argmax=argmax, **extra
    )


def _default_weights_preprocessing(info: Mapping[str, Any]) -> Mapping[str, Any] | None:
    weights = info.get("weights") or {}
    tag = info.get("default_weights")
    return weights.get(tag, {}).get("preprocessing") if tag else None


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
