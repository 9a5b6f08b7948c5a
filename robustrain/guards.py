"""Model guards: context managers that leave a model's train/eval modes as they found them.

* :func:`restore_modes`: every module's own ``training`` flag is restored on exit, even through an exception.
* :func:`eval_mode`: the model in eval mode inside the block, each module's own mode restored afterwards.

(``robustrain.attacks.attack_guard``, built on :func:`restore_modes`, also freezes the parameters and restores their
gradients and the norm layers' running-statistics flags, for attacks.)
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def restore_modes(model: nn.Module) -> Iterator[None]:
    """Restore each module's ``training`` flag on exit (a module may have its own mode, unlike its parent's)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and restore each module's own mode afterwards."""
    with restore_modes(model):
        model.eval()
        yield


__all__ = ["eval_mode", "restore_modes"]
