"""Deprecated alias of edgezoo.onnxgraph.tools
(moved so that export and simulation both read it from below); kept for one release."""

import warnings

from edgezoo.onnxgraph.tools import *  # noqa: F403
from edgezoo.onnxgraph.tools import __all__  # noqa: F401

warnings.warn(
    "edgezoo.export.graph_tools moved to edgezoo.onnxgraph.tools; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
