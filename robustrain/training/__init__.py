"""The one training loop, its presets, hooks, callbacks and checkpoints."""
from .callbacks import Callback, Checkpointer, JSONLLogger, ProgressBar
from .checkpoint import load_checkpoint, save_atomic
from .hooks import LossTerm, StepContext, WeightPerturbation
from .objectives import MART, OBJECTIVES, TRADES, CrossEntropy, build_objective
from .presets import FGSMTrainer, PGDTrainer
from .schedules import SCHEDULES, LRSchedule
from .trainer import Trainer

__all__ = [
    "Callback", "Checkpointer", "CrossEntropy", "FGSMTrainer", "JSONLLogger", "LRSchedule", "LossTerm",
    "MART", "OBJECTIVES", "PGDTrainer", "ProgressBar", "SCHEDULES", "StepContext", "TRADES", "Trainer",
    "WeightPerturbation", "build_objective",
    "load_checkpoint", "save_atomic",
]
