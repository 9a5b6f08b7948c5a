"""Experiment tracking: Weights & Biases (online, offline or disabled), rank 0 only.

Public API:

* :class:`WandbLogger`: the training callback (metrics, monitor events as alerts, checkpoints as artifacts).
* :func:`attach_report`: attach an evaluation report to a run folder's wandb run.
* :func:`resolve_mode`, :func:`is_main_process`, :func:`read_run_file`, :data:`RUN_FILE`: the mode, the rank and
  the run folder's record of its wandb run.

The program a wandb sweep agent runs is :mod:`robustrain.cli.sweep`.
"""
from .wandb_logger import RUN_FILE, WandbLogger, attach_report, is_main_process, read_run_file, resolve_mode

__all__ = ["RUN_FILE", "WandbLogger", "attach_report", "is_main_process", "read_run_file", "resolve_mode"]
