"""Deprecated alias of edgezoo.tidl.rules
(moved so that export and simulation both read it from below); kept for one release."""

import warnings

from edgezoo.tidl.rules import *  # noqa: F403
from edgezoo.tidl.rules import __all__  # noqa: F401

warnings.warn(
    "edgezoo.export.tidl_rules moved to edgezoo.tidl.rules; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
