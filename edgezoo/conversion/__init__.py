"""Automatic module-only conversion (torch.fx) of any traceable model."""

from edgezoo.conversion.module_only import ConversionReport, make_module_only

__all__ = ["ConversionReport", "make_module_only"]
