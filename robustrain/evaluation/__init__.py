"""Evaluation: clean and PGD accuracy per example; the AutoAttack cascade with sanity checks and a JSON report.

Public API:

* :func:`evaluate`, :class:`EvalResult`: per-example clean and robust correctness under a set of attacks.
* :func:`eval_mode` (from :mod:`robustrain.guards`): the model in eval mode, each module's own mode restored.
* :class:`EvalPlan`, :func:`evaluate_robustness`: one robustness evaluation from start to report (clean, robustrain
  attacks, AutoAttack, sanity checks; resumable).
* :func:`validate_report`, :func:`write_report`: the report's schema check and its ``report.json`` / ``report.md``.

The ``robustrain eval`` command and what it evaluates (run folders, checkpoints, ``module:factory`` models) are
:mod:`robustrain.cli.eval` and :mod:`robustrain.cli.target`.
"""
from ..guards import eval_mode
from .pipeline import EvalPlan, evaluate_robustness
from .report import validate_report, write_report
from .robust_accuracy import EvalResult, evaluate

__all__ = ["EvalPlan", "EvalResult", "eval_mode", "evaluate", "evaluate_robustness", "validate_report", "write_report"]
