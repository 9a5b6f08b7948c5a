"""The command line, the top layer: ``robustrain train | eval | report`` and the wandb sweep program.

Public API:

* :func:`main`: the ``robustrain`` command (console script ``robustrain``, ``python -m robustrain.cli``,
  ``python -m robustrain``); returns the exit status.
* :func:`build_parser`: its argument parser.

Modules: :mod:`.main` (the parser and the ``train`` / ``report`` commands), :mod:`.eval` (``robustrain eval``:
load the target, run the evaluation plan, write the report), :mod:`.target` (what ``eval`` evaluates: a run
folder, a checkpoint or a ``module:factory`` model), :mod:`.sweep` (the program a wandb sweep agent runs).
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
