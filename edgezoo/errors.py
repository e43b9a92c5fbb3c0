"""Exception types raised by edgezoo, so callers can catch each failure precisely."""

__all__ = [
    "CheckpointMismatchError",
    "ConversionError",
    "DataError",
    "DeviceUnavailableError",
    "DiskFullError",
    "DistributedError",
    "DownloadError",
    "EdgezooError",
    "ExportVerificationError",
    "HashMismatchError",
    "InputShapeError",
    "MemoryBudgetError",
    "ModelFileNotFoundError",
    "ModuleOnlyViolationError",
    "QuantizationConfigError",
    "QuantizationModeError",
    "ResumeMismatchError",
    "RunExistsError",
    "SharedModuleError",
    "SimulationError",
    "TIDLRuleError",
    "TrainingDivergedError",
    "UncalibratedRangesError",
    "UnknownModelError",
    "UnknownTargetError",
    "UnreadableModelError",
    "UsageError",
    "WeightsError",
]


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


class ResumeMismatchError(EdgezooError, ValueError):
    """A run resumed with settings that differ from the ones it was started with."""


class TrainingDivergedError(EdgezooError, FloatingPointError):
    """Training produced a non-finite loss (too high a learning rate, or bad input data)."""


class DeviceUnavailableError(EdgezooError, RuntimeError):
    """A device was asked for that this machine does not have (e.g. CUDA without a GPU)."""


class DistributedError(EdgezooError, RuntimeError):
    """A multi-process job that cannot go on: a rank is stuck, stopped or gone."""


class UsageError(EdgezooError, ValueError):
    """Options of a command that do not go together (the message says which to add)."""


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


class ModelFileNotFoundError(EdgezooError, FileNotFoundError):
    """No model file (ONNX) at the given path."""


class UnreadableModelError(EdgezooError, ValueError):
    """A file that is not a readable ONNX model (truncated, corrupt, or another format)."""


class UncalibratedRangesError(EdgezooError, ValueError):
    """A quantized model whose activation ranges never saw data, asked for deployment."""


class DiskFullError(EdgezooError, OSError):
    """A write failed because the disk (or quota) is full; earlier files are intact."""


class SimulationError(EdgezooError, ValueError):
    """A graph the TIDL integer simulation cannot run (an unsupported op, a missing Clip)."""


class MemoryBudgetError(EdgezooError, MemoryError):
    """Work whose estimated memory exceeds what the machine has free, refused before it
    allocates (a smaller batch or input fits)."""


class DataError(EdgezooError, ValueError):
    """A dataset directory, file or label that cannot be used as given."""


class RunExistsError(EdgezooError, FileExistsError):
    """An output directory that already holds a training run (resume or overwrite it)."""


class UnknownTargetError(EdgezooError, ValueError):
    """A target device edgezoo does not know (the message lists the close matches)."""


class ConversionError(EdgezooError, ValueError):
    """make_module_only cannot convert a model (fx cannot trace it, or a rewrite would differ)."""


class SharedModuleError(ConversionError):
    """A module with parameters or buffers is called more than once (real weight sharing)."""
