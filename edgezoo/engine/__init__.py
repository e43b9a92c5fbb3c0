"""Training engine: float training, PTQ calibration and QAT through one loop, on one process
or many (torchrun), with atomic checkpoints, exact resume and per-epoch metrics."""

from edgezoo.engine.checkpoint import save_checkpoint
from edgezoo.engine.config import MODES, TrainConfig
from edgezoo.engine.distributed import DistContext, cleanup_distributed, setup_distributed
from edgezoo.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from edgezoo.engine.resume import FIXED_ON_RESUME, load_run_config, resume_differences
from edgezoo.engine.rng import seed_everything
from edgezoo.engine.run_dir import BEST, LAST, METRICS_CSV, METRICS_JSON, prepare_run_dir
from edgezoo.engine.simulated import simulated_metrics
from edgezoo.engine.trainer import FitResult, evaluate, fit, weights_module
from edgezoo.hub import read_checkpoint

__all__ = [
    "BEST",
    "FIXED_ON_RESUME",
    "LAST",
    "METRICS_CSV",
    "METRICS_JSON",
    "MODES",
    "OPTIMIZERS",
    "SCHEDULES",
    "DistContext",
    "FitResult",
    "TrainConfig",
    "build_optimizer",
    "build_scheduler",
    "cleanup_distributed",
    "evaluate",
    "fit",
    "load_run_config",
    "prepare_run_dir",
    "read_checkpoint",
    "resume_differences",
    "save_checkpoint",
    "seed_everything",
    "setup_distributed",
    "simulated_metrics",
    "weights_module",
]
