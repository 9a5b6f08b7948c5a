"""CURE — Conserve-Update-Revise (Gowda, Zonooz & Arani, "Conserve-Update-Revise to Cure Generalization and
Robustness Trade-off in Adversarial Training", ICLR 2024, arXiv 2401.14948): selective layer-wise updating and a
stochastically revised EMA teacher.

Read from the official code, NeurAI-Lab/CURE@03fe414 (never copied): ``utilities/train.py`` (``Cure.train_cure``,
``update_ema_model_variables``), ``train_util/adversarial_loss.py`` (``cure_loss_dual``), ``kd_lib/losses/
kd_losses.py`` (``dml_Loss.kl_loss``, ``collate_loss``), ``utilities/args.py``. Per batch, with the paper's selective
update (``--reinit_mode rgp``):

1. attack: TRADES' KL-PGD-10 (ε 0.031, α 0.007, start x + 0.001·N(0, I), the model in eval mode) — here
   ``attack: {name: trades, ...}``;
2. loss (model in train mode): ``w_nat·CE(f(x), y) + w_rob·CE(f(x_adv), y)`` plus, weighted by ``gamma``
   (``--aux_loss_wt_kl1``, 1.0), ``KL(t(x) ‖ f(x)) + KL(t(x_adv) ‖ f(x_adv))`` with ``KL(q ‖ p) =
   Σ q·(log q − log p) / B`` at temperature 1, where t is the EMA teacher run in **train mode** (its BatchNorm uses
   the batch's statistics and updates its own running statistics), without gradient. Here: the main objective
   ``ce`` on x_adv scaled by ``w_rob`` (this procedure's per-example weights), and the loss term ``cure`` (this
   procedure's) adds ``w_nat·CE(f(x))`` and the two KL terms (logged as ``cure/ce_nat``, ``cure/kl_nat``,
   ``cure/kl_adv``);
3. **conserve / update** (gradient prominence): after backward, for every parameter tensor whose name contains none
   of ``exclude`` (the code skips names containing ``linear`` or ``fc``: the classifier), the gradient entries with
   ``|g| < percentile(|g|, 100·p)`` of that tensor (``np.percentile``, linear interpolation; ``torch.quantile``
   here) are set to 0, so the optimiser step updates only the top (1 − p) of each layer's gradients (SGD's weight
   decay and momentum still act on the rest, as in the code);
4. optimiser step; then **revise**: with probability ``rate`` (``--ema_update_freq`` 0.2; ``torch.rand(1) < r``,
   here from the procedure's own generator) the teacher's parameters move towards the student's,
   ``θ_t ← a·θ_t + (1 − a)·θ``, ``a = min(1 − 1/(s + 1), decay)``, s the number of optimiser steps so far (from 1;
   ``--ema_alpha`` 0.999). Its buffers are its own (``buffers: own``).

The student is what the code evaluates and saves (the teacher only when ``train_mode`` contains ``ema``), so
validation and checkpoints use the training weights here too. Where the README and the code differ: the README's
command passes ``--percentile 30`` (the code multiplies by 100: ``np.percentile(..., 3000)`` raises; a fraction,
0.3, is meant), ``--aux_loss_wt`` (ambiguous with ``--aux_loss_wt_kl1/l21/at1``) and no ``--reinit_mode``: with the
default ``''`` the code trains TRADES (``CE + β·KL``, β = ``--trades_beta`` 5) with the EMA distillation and *no*
gradient masking, and ``--reinit`` loads a naturally pre-trained model from ``--model_dir`` (``train_warmup.py``,
80 epochs). This procedure is the paper's CURE, i.e. the code's ``rgp`` mode; it starts from the usual
initialisation (a warm start is a different run: load its weights yourself).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from ..hooks import LossTerm, StepContext
from . import register_procedure
from ._averaging import WeightAveraging, plain_model


def distill_kl(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(softmax(teacher) ‖ softmax(student)) summed and divided by the batch size (temperature 1)."""
    return F.kl_div(F.log_softmax(student.float(), dim=1), F.softmax(teacher.float(), dim=1), reduction="sum") / len(student)


@torch.no_grad()
def conserve(named_grads: list[tuple[str, Tensor]], percentile: float, exclude: tuple[str, ...]) -> int:
    """Zero, in each gradient tensor whose name contains none of ``exclude``, the entries with ``|g|`` below the
    ``percentile`` quantile of that tensor's ``|g|``; returns the number of entries zeroed."""
    zeroed = 0
    for name, g in named_grads:
        if any(e in name for e in exclude):
            continue
        mag = g.abs()
        threshold = torch.quantile(mag.flatten().float(), percentile)
        below = mag < threshold
        g[below] = 0.0
        zeroed += int(below.sum())
    return zeroed


class CUREDistillation(LossTerm):
    """``w_nat·CE(f(x)) + gamma·(KL(t(x) ‖ f(x)) + KL(t(x_adv) ‖ f(x_adv)))`` with CURE's EMA teacher t."""

    name = "cure"

    def __init__(self, procedure: "CURE"):
        self.procedure = procedure

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        proc = self.procedure
        teacher = proc.ensure(plain_model(ctx.model))  # made here too after a mid-epoch resume
        with ctx.autocast():
            logits_nat = ctx.model(ctx.x)
        logits_adv = ctx.logits_adv if ctx.logits_adv is not None else ctx.model(ctx.result.x_adv)
        with torch.no_grad(), ctx.autocast():
            teacher.train()  # the official teacher runs in train mode: batch statistics, its own running ones updated
            t_nat, t_adv = teacher(ctx.x), teacher(ctx.result.x_adv)
            teacher.eval()
        ce_nat = F.cross_entropy(logits_nat.float(), ctx.y)
        kl_nat, kl_adv = distill_kl(logits_nat, t_nat), distill_kl(logits_adv, t_adv)
        loss = proc.w_nat * ce_nat + proc.gamma * (kl_nat + kl_adv)
        return {"loss": loss, "ce_nat": ce_nat.detach(), "kl_nat": kl_nat.detach(), "kl_adv": kl_adv.detach()}


@register_procedure
class CURE(WeightAveraging):
    """Conserve (gradient masking), update, revise (stochastic EMA teacher); see the module docstring."""

    name = "cure"
    buffer_modes = ("own",)
    provides_eval_model = False  # the teacher is not the model evaluated (the official code evaluates the student)

    def __init__(self, *, percentile: float = 0.3, exclude: Any = ("linear", "fc"), w_nat: float = 0.1,
                 w_rob: float = 0.9, gamma: float = 1.0, decay: float = 0.999, rate: float = 0.2, seed: int = 0):
        super().__init__(buffers="own", use_for=())
        self.percentile = float(percentile)
        if not 0.0 <= self.percentile <= 1.0:
            hint = f" (a percentage? use {self.percentile / 100:g})" if 1.0 < self.percentile <= 100.0 else ""
            raise ConfigError(f"cure.percentile is the fraction of each layer's gradient entries conserved (not "
                              f"updated), in [0, 1]; got {percentile!r}{hint}.")
        self.rate = float(rate)
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"cure.rate is the probability of a teacher revision per step, in [0, 1]; got {rate!r}.")
        self.decay = float(decay)
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"cure.decay must lie in [0, 1), got {decay!r}.")
        for key, value in (("w_nat", w_nat), ("w_rob", w_rob), ("gamma", gamma)):
            if float(value) < 0:
                raise ConfigError(f"cure.{key} is a loss weight >= 0, got {value!r}.")
        self.w_nat, self.w_rob, self.gamma = float(w_nat), float(w_rob), float(gamma)
        if isinstance(exclude, str):
            exclude = [exclude]
        if not isinstance(exclude, (list, tuple)) or not all(isinstance(e, str) for e in exclude):
            raise ConfigError(f"cure.exclude is a list of parameter-name substrings left unmasked (the official code: "
                              f"[linear, fc]); got {exclude!r}.")
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ConfigError(f"cure.seed must be a whole number >= 0, got {seed!r}.")
        self.exclude, self.seed = tuple(exclude), int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.conserved = 0  # gradient entries zeroed at the last step
        self._term = CUREDistillation(self)

    def loss_terms(self) -> list[LossTerm]:
        return [self._term]

    def weights(self, ctx, per_example):
        return torch.full_like(per_example, self.w_rob)

    def before_step(self, model, optimizer, ctx):
        grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        self.conserved = conserve(grads, self.percentile, self.exclude)

    def after_step(self, model, optimizer, ctx):
        revise = float(torch.rand(1, generator=self.generator)) < self.rate
        if revise:
            s = ctx.step + 1
            self.fold_in(model, min(1.0 - 1.0 / (s + 1.0), self.decay))

    def _extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

