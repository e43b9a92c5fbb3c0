"""Default hyperparameters by mode and optimizer, in one place so the CLI and the demo agree.

The QAT defaults (AdamW lr 1e-5 without weight decay, activation ranges frozen after the first
epoch, TI's BN freeze) are the recipe with the best mean validation top-1 over MobileNetV2 and
ResNet18 fine-tuned from converged float checkpoints (benchmarks/accuracy.py, docs/accuracy.md:
chosen on 5000 held-out training images, never on the test set; the margins are a tenth of a
point, within one validation set's noise).
"""

# Float training from scratch or from ImageNet weights; QAT fine-tunes a trained float model
# with a learning rate two orders of magnitude below (TI uses 1e-5 for long ImageNet runs).
_LR = {
    ("float", "adamw"): 2e-3,
    ("float", "sgd"): 0.05,
    ("qat", "adamw"): 1e-5,
    ("qat", "sgd"): 1e-3,
    ("calibrate", "adamw"): 0.0,
    ("calibrate", "sgd"): 0.0,
}
_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 4e-5}


def default_lr(mode: str, optimizer: str) -> float:
    """The learning rate a run of this mode starts from."""
    return _LR[(mode, optimizer)]


def default_weight_decay(optimizer: str, mode: str = "float") -> float:
    """Decoupled decay for AdamW (none in QAT, which starts from trained weights); the usual
    MobileNet decay for SGD."""
    if mode == "qat" and optimizer == "adamw":
        return 0.0
    return _WEIGHT_DECAY[optimizer]


def default_range_freeze_epoch(mode: str) -> int | None:
    """QAT freezes its activation ranges after the first epoch (chosen on validation over
    TI's epochs//2 + 1 and over freezing BN from the start); None for other modes."""
    return 1 if mode == "qat" else None


def default_warmup(mode: str) -> int:
    """One warm-up epoch for float training from scratch; none when fine-tuning with QAT."""
    return 1 if mode == "float" else 0
