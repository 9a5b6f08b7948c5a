"""The one training loop, its presets, hooks, callbacks and checkpoints.

Public API:

* :class:`Trainer`: the only training loop; :class:`FGSMTrainer`, :class:`PGDTrainer`: its presets.
* hooks a method plugs into: :class:`StepContext`, :class:`LossTerm` (regularisers), :class:`WeightPerturbation`.
* objectives: :class:`CrossEntropy`, :class:`TRADES`, :class:`MART`, :data:`OBJECTIVES`, :func:`build_objective`.
* :class:`LRSchedule`, :data:`SCHEDULES`: the learning-rate schedules.
* callbacks: :class:`Callback`, :class:`Checkpointer`, :class:`JSONLLogger`, :class:`ProgressBar` (the overfitting
  monitor is :class:`robustrain.training.monitor.OverfitMonitor`).
* checkpoints: :func:`load_checkpoint`, :func:`save_atomic`.
"""
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
