"""The hooks methods plug into: the step context, loss terms (regularisers), weight perturbation and procedures.

A method is a composition run by the one Trainer: an attack, an objective, a list of loss terms, an
optional weight perturbation, training procedures and callbacks. These are the interfaces of the middle four.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..attacks import AttackResult
from ..threat import ThreatModel


@dataclass
class StepContext:
    """Everything a training step knows, handed to the objective, the weight perturbation and the loss terms.

    The Trainer builds one per step, after the attack, and hands it on in this order; each field has one writer:

    ====================  =====================================  ====================================================
    field                 written by, when                       read by
    ====================  =====================================  ====================================================
    model … autocast,     the Trainer, at construction (before   everyone
    optimizer, threat     the objective); never changed
    logits_adv            the objective, on every call: the      AAER (z^adv), the Trainer's training accuracy
                          forward on ``result.x_adv``. The       (``sync_step``); a term may reuse it instead of
                          weight perturbation's ``loss_fn()``    running its own forward
                          calls the objective at perturbed
                          weights first; the Trainer's own call
                          (inside the perturbation, before the
                          terms) writes the value terms see
    extras                loss terms, in list order (the         later terms of the same step; empty at construction,
                          library's terms write nothing)         never carried to the next step
    ====================  =====================================  ====================================================

    Per step: attack → ``StepContext(...)`` → [``weight_perturbation.applied(ctx, loss_fn)`` enters] →
    ``objective(ctx)`` (sets ``logits_adv``) → each term's ``term(ctx)`` in list order → backward, optimiser step →
    [perturbation exits] → each term's ``after_step(ctx, out)``.

    Fields (positional order):
        model: the module the training forwards go through (the model, or its DDP / compiled wrapper).
        x, y: the clean batch (inputs in [0,1]) and its labels.
        result: the attack's :class:`~robustrain.attacks.AttackResult` for this batch.
        epoch: finished epochs (0-based epoch of this step); step: finished optimiser steps.
        generator: the trainer's generator; every random draw of a term comes from it.
        autocast: a callable giving the training forward's autocast context.
        logits_adv: see the table; None until the objective ran.
        extras: see the table.
        optimizer: the trainer's optimiser (LAP's official-code behaviour steps it).
        threat: the threat model the attack of this step used: during the ε warm-up the scaled one
            (``Attack.scaled``), else the configured one. Terms that draw points in the ε-ball use it (ELLE's triplets,
            GradAlign's η; :func:`robustrain.regularisers.base.step_threat`); None (a context built outside the
            Trainer) means: the term's own threat model.
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
    optimizer: torch.optim.Optimizer | None = None
    threat: ThreatModel | None = None


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

    def on_epoch_end(self, epoch: int, model: nn.Module | None = None) -> None:
        """Called once per finished epoch (0-based ``epoch``), after validation, with the plain model (not a DDP or
        compiled wrapper). A term written before ``model`` was passed (``on_epoch_end(self, epoch)``) still works:
        the Trainer passes ``model`` only where the signature takes it."""

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


class Procedure:
    """A training procedure beyond a loss term (FOMO, DOM, CURE, HR, weight averaging): hooks into the Trainer's
    loop with the model, the optimiser and the epoch. Every hook is optional (the defaults do nothing); the Trainer
    calls the procedures in list order at each point. ``model`` is always the plain model (not a DDP or compiled
    wrapper); a procedure that changes the weights changes them for every later part of the loop.

    Per epoch and step, where the Trainer calls them::

        setup(epochs=, steps_per_epoch=)            once, when the Trainer is built (the length of the training)
        on_epoch_start(model, optimizer, epoch)     at the first batch of an epoch (not again on a mid-epoch resume)
        per batch:
          select(model, x, y, epoch=, step=, generator=) -> keep | None     before the attack (data selection)
          augment(model, x, y, epoch=, step=, generator=) -> x' | None      before the attack (replace inputs)
          attack → StepContext → [weight perturbation enters] → objective (per-example losses ℓ_i)
          weights(ctx, per_example) -> w | None     the main loss becomes mean_i(w_i · ℓ_i) (per-example weighting,
                                                    DRO; selection *before the loss* is a weight 0)
          + loss terms (the configured ones, then the procedures' own: loss_terms()) → backward → gradient clipping
          before_step(model, optimizer, ctx)        gradients ready, before the optimiser step (gradient masking)
          optimiser step(s) → [weight perturbation exits: the weights are the real ones again]
          after_step(model, optimizer, ctx)         after the update (EMA of the weights, weight surgery)
        on_epoch_end(model, optimizer, epoch)       after the epoch's last step, before validation (so validation
                                                    and checkpoints see the weights training continues from)
        eval_model(model, purpose) -> module | None the model validation ("validation") or the final test and
                                                    ``robustrain eval`` ("final") use instead of the training
                                                    weights (weight averaging: EMA, SWA); None: the training model

    ``select`` returns the indices (a LongTensor) or a boolean mask of the examples to keep; the Trainer cuts
    ``x``, ``y`` (and the dataset indices) to them; the model is in train mode there, so a forward that must not
    update BatchNorm statistics runs under :func:`robustrain.guards.eval_mode`. It must keep at least one example. ``augment`` returns new inputs
    of the same shape (e.g. DOM's augmentation of the low-loss examples; labels stay). ``weights`` returns a (B,)
    tensor; with several procedures the weights multiply; ones leave the loss unchanged. The weight perturbation's
    ``loss_fn`` (AWP's ascent) stays unweighted. Random draws come from ``generator`` (the trainer's, per rank) or
    from a generator the procedure keeps in its state. Stateful procedures implement ``state_dict`` /
    ``load_state_dict``: the Trainer stores them in every checkpoint under ``procedures``, so a resume is exact.

    A procedure is registered at its definition with :func:`robustrain.training.procedures.register_procedure`
    and built from a config section ``procedures: [{name: ..., option: value}]``; its options are the keyword-only
    arguments of its constructor.
    """

    name = "procedure"

    def setup(self, *, epochs: int, steps_per_epoch: int) -> None:
        """The training's length, given once by the Trainer when it is built (before any other hook): a procedure
        whose schedule is a fraction of the training (DOM acts from half of it) reads it here. Within an epoch the
        batch index of a step is ``step - epoch * steps_per_epoch``."""

    def on_epoch_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Before the epoch's first batch."""

    def select(self, model: nn.Module, x: Tensor, y: Tensor, *, epoch: int, step: int,
               generator: torch.Generator) -> Tensor | None:
        """The examples of the batch to keep (indices or a boolean mask), before the attack; None keeps all."""
        return None

    def augment(self, model: nn.Module, x: Tensor, y: Tensor, *, epoch: int, step: int,
                generator: torch.Generator) -> Tensor | None:
        """New inputs for the batch (same shape, in [0,1]), after :meth:`select` and before the attack; None keeps
        them."""
        return None

    def weights(self, ctx: StepContext, per_example: Tensor) -> Tensor | None:
        """Per-example weights (B,) of the main loss ``mean(w · per_example)``; None leaves it unweighted."""
        return None

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: StepContext) -> None:
        """After backward (and clipping), before the optimiser step: the gradients are in ``p.grad``."""

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: StepContext) -> None:
        """After the optimiser step(s), weights restored from any weight perturbation."""

    def on_epoch_end(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """After the epoch's last step, before validation."""

    def loss_terms(self) -> list[LossTerm]:
        """Loss terms this procedure adds to the training loss (called once, when the Trainer is built; they run
        after the configured regularisers, are logged as ``<term.name>/...`` and may read the procedure's state,
        e.g. FOMO's consistency to its stable model or CURE's distillation from its EMA teacher). Their state lives
        in the procedure (the terms' own ``state_dict`` may stay empty)."""
        return []

    provides_eval_model = False
    """True for a procedure whose :meth:`eval_model` may return a model (at most one per run; the config checks)."""

    def eval_model(self, model: nn.Module, purpose: str) -> nn.Module | None:
        """The module to evaluate instead of ``model`` (the training weights), or None. ``purpose`` is
        ``"validation"`` (the held-out validation after each epoch, hence also the choice of ``best.pt``) or
        ``"final"`` (its state dict is stored as ``eval_model`` in every checkpoint, and the final test evaluation
        and ``robustrain eval RUN`` evaluate it). It is evaluated in eval mode and must not share parameters with
        ``model``; weight averaging (:mod:`robustrain.training.procedures.ema`, ``swa``) returns its averaged copy."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
