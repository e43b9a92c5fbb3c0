"""Exception types raised by edgezoo, so callers can catch each failure precisely."""


class EdgezooError(Exception):
    """Base class of every error edgezoo raises on purpose."""


class UnknownModelError(EdgezooError, ValueError):
    """A model name or weights tag that the registry does not know."""


class TIDLRuleError(EdgezooError, ValueError):
    """An operation or configuration that TIDL cannot import or run."""


class WeightsError(EdgezooError, RuntimeError):
    """Pretrained weights could not be fetched, verified or loaded."""


class HashMismatchError(WeightsError):
    """A downloaded or cached file whose sha256 does not match the manifest."""


class DownloadError(WeightsError):
    """A weights file could not be downloaded."""


class CheckpointMismatchError(WeightsError):
    """A checkpoint whose keys or shapes do not fit the model."""


class InputShapeError(EdgezooError, ValueError):
    """An input tensor whose shape the model cannot process (e.g. not a multiple of its stride)."""


class ModuleOnlyViolationError(EdgezooError, ValueError):
    """A model that breaks the module-only rules quantization depends on."""


class QuantizationConfigError(EdgezooError, ValueError):
    """A quantization setting (bit width, clip range, module state) that cannot be used as given."""


class QuantizationModeError(EdgezooError, RuntimeError):
    """A quantization wrapper asked for what its mode forbids (e.g. training a QuantTestModule)."""


class ExportVerificationError(EdgezooError, RuntimeError):
    """An exported ONNX graph that breaks TIDL's import rules; `.report` lists the violations."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class DataError(EdgezooError, ValueError):
    """A dataset directory, file or label that cannot be used as given."""


class RunExistsError(EdgezooError, FileExistsError):
    """An output directory that already holds a training run (resume or overwrite it)."""
