"""Experiment tracking: Weights & Biases (online, offline or disabled), rank 0 only."""
from .wandb_logger import RUN_FILE, WandbLogger, attach_report, is_main_process, read_run_file, resolve_mode

__all__ = ["RUN_FILE", "WandbLogger", "attach_report", "is_main_process", "read_run_file", "resolve_mode"]
