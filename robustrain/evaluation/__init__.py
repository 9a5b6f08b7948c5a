"""Evaluation: clean and PGD accuracy per example (AutoAttack arrives in its own issue)."""
from .robust_accuracy import EvalResult, eval_mode, evaluate

__all__ = ["EvalResult", "eval_mode", "evaluate"]
