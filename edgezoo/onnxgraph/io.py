"""Reading an ONNX file for the verifier, the simulator and the CLI, with errors that say what
went wrong (missing, unreadable, external data not beside it, empty)."""

import os
from pathlib import Path

import onnx

from edgezoo.errors import ModelFileNotFoundError, UnreadableModelError

__all__ = ["load_onnx"]


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file; ModelFileNotFoundError / UnreadableModelError say what went wrong."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFoundError(f"no ONNX file at {path}; check the path")
    try:
        proto = onnx.load(path)
    except Exception as err:
        missing = _missing_external_data(path)
        if missing:
            raise UnreadableModelError(
                f"{path} keeps its weights in external data files that are not beside it "
                f"({', '.join(missing)}): copy them next to the .onnx file, or export it again "
                "as one file"
            ) from err
        raise UnreadableModelError(
            f"{path} is not a readable ONNX model ({type(err).__name__}): a truncated or "
            "corrupt file, or another format; export it again"
        ) from err
    if not proto.graph.node:
        raise UnreadableModelError(f"{path} holds no ONNX graph (no nodes); export it again")
    return proto


def _missing_external_data(path: Path) -> list[str]:
    """The external data files a model names that are not beside it (reads the graph only)."""
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:
        return []
    tensors = [*proto.graph.initializer]
    tensors += [a.t for node in proto.graph.node for a in node.attribute if a.HasField("t")]
    locations = {
        entry.value
        for tensor in tensors
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return sorted(name for name in locations if not (path.parent / name).is_file())
