"""The quantization modes, named once: which wrapper a model gets, and which run uses which.

Wrapper modes (get_model(qat=...), wrap_model): "train" (QuantTrainModule, QAT; also True or
"qat"), "calibrate" (QuantCalibrateModule, PTQ) and "test" (QuantTestModule, evaluation only).
Engine runs (TrainConfig.mode, the CLI, the demo's stages) are "float", "qat" and "calibrate";
each quantized run uses the wrapper mode RUN_WRAPPER_MODES names, and a wrapper takes a run's
name too, so "qat" and "calibrate" mean the same everywhere. PTQ is the "calibrate" run.
"""

from edgezoo.errors import QuantizationConfigError

TRAIN = "train"
CALIBRATE = "calibrate"
TEST = "test"
WRAPPER_MODES = (TRAIN, CALIBRATE, TEST)

FLOAT_RUN = "float"
QAT_RUN = "qat"
RUN_MODES = (FLOAT_RUN, QAT_RUN, CALIBRATE)
RUN_WRAPPER_MODES = {QAT_RUN: TRAIN, CALIBRATE: CALIBRATE, TEST: TEST}
"""Engine run (or evaluation) mode -> the wrapper mode its model is built with."""


def wrapper_mode(qat: bool | str) -> str | None:
    """The wrapper mode `qat` asks for: None for False, "train" for True, else a checked name."""
    if qat is False:
        return None
    mode = (
        TRAIN if qat is True else RUN_WRAPPER_MODES.get(qat, qat) if isinstance(qat, str) else qat
    )
    if not isinstance(mode, str) or mode not in WRAPPER_MODES:
        raise QuantizationConfigError(
            f"unknown quantization mode {qat!r}: use True, 'train' or 'qat' (QAT), "
            "'calibrate' (PTQ) or 'test' (evaluation)"
        )
    return mode
