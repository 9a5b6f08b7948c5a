"""The one training loop, its presets, hooks, callbacks and checkpoints.

Public API:

* :class:`Trainer`: the only training loop; :class:`FGSMTrainer`, :class:`PGDTrainer`: its presets.
* hooks a method plugs into: :class:`StepContext`, :class:`LossTerm` (regularisers), :class:`WeightPerturbation`,
  :class:`Procedure` (training procedures beyond a loss term; :data:`PROCEDURES`, :func:`register_procedure`,
  :func:`build_procedure`, one file each in ``training/procedures/``).
* remedies the Trainer applies (``trainer.apply``): :class:`Remedy`, :data:`REMEDIES`, :func:`build_remedy`.
* objectives: :class:`CrossEntropy`, :class:`TRADES`, :class:`MART`, :data:`OBJECTIVES`, :func:`build_objective`.
* :class:`LRSchedule`, :data:`SCHEDULES`: the learning-rate schedules.
* callbacks: :class:`Callback`, :class:`Checkpointer`, :class:`JSONLLogger`, :class:`ProgressBar` (the overfitting
  monitor is :class:`robustrain.training.monitor.OverfitMonitor`).
* checkpoints: :func:`load_checkpoint`, :func:`save_atomic`.
"""
from .callbacks import Callback, Checkpointer, JSONLLogger, ProgressBar, read_jsonl
from .checkpoint import load_checkpoint, save_atomic
from .hooks import LossTerm, Procedure, StepContext, WeightPerturbation
from .objectives import MART, OBJECTIVES, TRADES, CrossEntropy, build_objective
from .presets import FGSMTrainer, PGDTrainer
from .procedures import PROCEDURES, build_procedure, register_procedure
from .remedies import REMEDIES, Remedy, build_remedy
from .schedules import SCHEDULES, LRSchedule
from .trainer import Trainer

__all__ = [
    "Callback", "Checkpointer", "CrossEntropy", "FGSMTrainer", "JSONLLogger", "LRSchedule", "LossTerm", "read_jsonl",
    "MART", "OBJECTIVES", "PGDTrainer", "PROCEDURES", "Procedure", "ProgressBar", "REMEDIES", "Remedy", "SCHEDULES",
    "StepContext", "TRADES", "Trainer", "WeightPerturbation", "build_objective", "build_procedure", "build_remedy",
    "register_procedure",
    "load_checkpoint", "save_atomic",
]
