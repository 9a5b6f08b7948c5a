"""The hooks methods plug into: the step context, loss terms (regularisers) and weight perturbation.

A method is a composition run by the one Trainer: an attack, an objective, a list of loss terms, an
optional weight perturbation and callbacks. These are the interfaces of the middle three.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..attacks import AttackResult


@dataclass
class StepContext:
    """Everything a training step knows, handed to the objective, loss terms and weight perturbation.

    ``logits_adv`` is filled by the objective (the training forward on ``result.x_adv``) before the loss
    terms run, so a term can reuse it instead of running its own forward.
    """

    model: nn.Module
    x: Tensor
    y: Tensor
    result: AttackResult
    epoch: int
    step: int
    generator: torch.Generator
    autocast: Callable[[], contextlib.AbstractContextManager]
    logits_adv: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None  # the trainer's (LAP's official-code behaviour steps it)


class LossTerm:
    """A term added to the training loss (the regulariser hook).

    ``__call__`` returns a dict with ``"loss"`` (a scalar tensor, already multiplied by the term's own
    weight) and any floats or tensors to log. ``after_step`` runs after the optimiser step (adaptive
    weights such as ELLE-A's λ update there). Stateful terms implement ``state_dict``.
    """

    name = "term"
    signals: dict[str, str] = {}
    """Early-warning signals this term provides to the overfitting monitor: signal name → the key of the value in
    the dict ``__call__`` returns (logged as ``<name>/<key>``). The monitor averages each between its checks and
    records it in the check as ``<name>/<signal>``; tests/test_monitor.py fails if one never arrives."""
    optimizer_steps = 1
    """Optimiser steps the Trainer takes per batch with this batch's gradients (the largest over the terms wins).
    1 for every method except ELLE / ELLE-A with ``behaviour: code``: the official ELLE loop calls
    ``optimizer.step()`` twice per batch, the second time after its per-iteration scheduler has stepped."""

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError

    def after_step(self, ctx: StepContext, out: dict[str, Any]) -> None:
        """Update internal state after the optimiser step."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called once per finished epoch."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class WeightPerturbation:
    """Weight perturbation hook (AWP, RWP, LAP): the optimiser step runs inside :meth:`applied`.

    ``applied(ctx, loss_fn)`` perturbs the weights (``loss_fn()`` recomputes the training objective's mean at
    the current weights, ``loss_fn(per_example=True)`` its per-example values (B,), for methods that ascend
    it), yields, and restores the weights in ``finally``. Implementations live in ``robustrain.perturbation``.
    """

    name = "weight_perturbation"

    @contextlib.contextmanager
    def applied(self, ctx: StepContext, loss_fn: Callable[..., Tensor]) -> Iterator[None]:
        yield

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
