"""edgezoo's version, read from the installed package's metadata (pyproject.toml is the one
place it is written)."""

from importlib import metadata

try:
    __version__ = metadata.version("edgezoo")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

__all__ = ["__version__"]
