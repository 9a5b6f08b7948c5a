"""Evaluation: clean and PGD accuracy per example; the AutoAttack cascade with sanity checks and a JSON report."""
from .pipeline import EvalPlan, evaluate_robustness
from .report import validate_report, write_report
from .robust_accuracy import EvalResult, eval_mode, evaluate

__all__ = ["EvalPlan", "EvalResult", "eval_mode", "evaluate", "evaluate_robustness", "validate_report", "write_report"]
