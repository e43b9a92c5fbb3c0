"""Default hyperparameters by mode and optimizer, in one place so the CLI and the demo agree.

The QAT defaults (AdamW lr 1e-4 without weight decay, TI's freeze schedule) are the recipe whose
worst shortfall from the best recipe on any model's validation split is smallest (0.16 point)
over MobileNetV2, ResNet18 and DeepLabV3+ MobileNetV2 fine-tuned from converged float models
(benchmarks/accuracy.py, docs/accuracy.md: chosen on held-out training images, never on the
test set). lr 1e-5 is as good on the classifiers but a point of mIoU worse on segmentation.
"""

from edgezoo.quantization.modes import CALIBRATE, FLOAT_RUN, QAT_RUN

# Float training from scratch or from ImageNet weights; QAT fine-tunes a trained float model
# with a learning rate an order of magnitude or more below (TI uses 1e-5 for long ImageNet runs).
_LR = {
    (FLOAT_RUN, "adamw"): 2e-3,
    (FLOAT_RUN, "sgd"): 0.05,
    (QAT_RUN, "adamw"): 1e-4,
    (QAT_RUN, "sgd"): 1e-3,
    (CALIBRATE, "adamw"): 0.0,
    (CALIBRATE, "sgd"): 0.0,
}
_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 4e-5}


def default_lr(mode: str, optimizer: str) -> float:
    """The learning rate a run of this mode starts from."""
    return _LR[(mode, optimizer)]


def default_weight_decay(optimizer: str, mode: str = FLOAT_RUN) -> float:
    """Decoupled decay for AdamW (none in QAT, which starts from trained weights); the usual
    MobileNet decay for SGD."""
    if mode == QAT_RUN and optimizer == "adamw":
        return 0.0
    return _WEIGHT_DECAY[optimizer]


def default_warmup(mode: str) -> int:
    """One warm-up epoch for float training from scratch; none when fine-tuning with QAT."""
    return 1 if mode == FLOAT_RUN else 0


DEFAULT_RANGE_LR = 1e-2
"""Learned ranges' threshold learning rate: an Adam step moves log2 of a clip by about this
much, so a few hundred QAT steps can move a clip by a power of two or two (TQT trains its
thresholds faster than its weights for the same reason)."""
