"""onnxruntime sessions for exported graphs: CPU, quiet, optionally without fusions."""

import os

import onnx
import onnxruntime as ort

__all__ = ["onnxruntime_session"]


def onnxruntime_session(
    model: str | os.PathLike | onnx.ModelProto, optimize: bool = True, threads: int = 0
) -> ort.InferenceSession:
    """A CPU onnxruntime session for an ONNX file or ModelProto, with warnings silenced.

    optimize=False runs the graph exactly as written (no ORT fusions); threads=0 lets ORT pick.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
