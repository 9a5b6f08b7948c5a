"""The one training loop, its presets, hooks, callbacks and checkpoints."""
from .callbacks import Callback, Checkpointer, JSONLLogger, ProgressBar
from .checkpoint import load_checkpoint, save_atomic
from .hooks import LossTerm, StepContext, WeightPerturbation
from .objectives import CrossEntropy
from .presets import FGSMTrainer, PGDTrainer
from .schedules import SCHEDULES, LRSchedule
from .trainer import Trainer

__all__ = [
    "Callback", "Checkpointer", "CrossEntropy", "FGSMTrainer", "JSONLLogger", "LRSchedule", "LossTerm",
    "PGDTrainer", "ProgressBar", "SCHEDULES", "StepContext", "Trainer", "WeightPerturbation",
    "load_checkpoint", "save_atomic",
]
