"""Default hyperparameters by mode and optimizer, in one place so the CLI and the demo agree."""

# Float training from scratch or from ImageNet weights; QAT fine-tunes a trained float model
# with a learning rate an order of magnitude or more below (TI uses 1e-5 for long ImageNet runs).
_LR = {
    ("float", "adamw"): 2e-3,
    ("float", "sgd"): 0.05,
    ("qat", "adamw"): 1e-4,
    ("qat", "sgd"): 1e-3,
    ("calibrate", "adamw"): 0.0,
    ("calibrate", "sgd"): 0.0,
}
_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 4e-5}


def default_lr(mode: str, optimizer: str) -> float:
    """The learning rate a run of this mode starts from."""
    return _LR[(mode, optimizer)]


def default_weight_decay(optimizer: str) -> float:
    """Decoupled decay for AdamW; the usual MobileNet decay for SGD."""
    return _WEIGHT_DECAY[optimizer]


def default_warmup(mode: str) -> int:
    """One warm-up epoch for float training from scratch; none when fine-tuning with QAT."""
    return 1 if mode == "float" else 0
