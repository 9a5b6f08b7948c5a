"""FOMO — Forget to Mitigate Overfitting (Ramkumar, Zonooz & Arani, "The Effectiveness of Random Forgetting for
Robust Generalization", ICLR 2024, arXiv 2402.11733): forgetting, relearning and consolidation around adversarial
training.

**No official code to follow, so no parity entry.** NeurAI-Lab/FOMO@7f20268 holds only README.md and a figure (in
every one of its seven commits, 8295fe4 to 7f20268); its README describes another project's script
(``LURE_main.py``, ``ALMA.py``, anytime learning with SNIP pruning, copied from NeurAI-Lab/LURE@04eb1ef), and no
other public repository read here holds FOMO code (checked again for issue 18: repositories named like FOMO or
NeurAI-Lab, and the paper's title and citation key in the code index). ``tests/parity/`` therefore has no FOMO case:
there is no official loop to run beside it. This procedure follows the paper's description (behaviour: paper), as far as it could be
read here (the abstract, the ICLR summary: "periodically reinitializing a random subset of weights in the later
layers", "a consolidation step, employing a stable model with exponential moving average weights, ... after each
relearning phase, acting as a long-term memory", "consistency regularization ... after each forgetting step,
aligning its decision boundary with the stable model"). The paper's hyper-parameter values could not be read in
this project's sources: every default below is robustrain's choice [U], not the paper's; recipes say so.

Control flow (epochs 0-based; ``every`` = the relearning phase's length E_r in epochs):

* standard adversarial training until epoch ``start_epoch``;
* **consolidation**: the stable model θ_s (a copy of the initial weights θ₀) follows the working weights θ:
  ``consolidate: step`` (default) after every optimiser step ``t`` (from 1) with
  ``θ_s ← a·θ_s + (1 − a)·θ``, ``a = min(1 − 1/(t + 1), decay)`` (the mean-teacher warm-up NeurAI-Lab's codes use,
  e.g. CURE's ``update_ema_model_variables``); ``consolidate: phase`` once at the end of each relearning phase,
  right before the forgetting, with ``a = decay`` (the first one copies θ). BatchNorm buffers are averaged like the
  weights (the stable model is only ever run in eval mode);
* **forgetting**: at the start of epoch ``start_epoch`` and every ``every`` epochs after it, in each selected layer
  (``modules``: name prefixes of conv / linear modules of the plain model, e.g. ``[net.layer4, net.linear]``; empty:
  the last ``last`` conv / linear modules, "the later layers"), each weight entry is re-initialised with probability
  ``fraction``: ``w ← m·w_new + (1 − m)·w``, ``m ~ Bernoulli(fraction)``, w_new a fresh draw of the module's own
  initialisation (``reset_parameters``); biases, BatchNorm and the optimiser state are left as they are. The masks
  and draws come from the procedure's own generator (``seed``), saved in checkpoints;
* **relearning** with **consistency**: from the first forgetting on, the loss gains
  ``consistency · KL(p_s(x_adv) ‖ p(x_adv))`` (batch mean; p_s the stable model's softmax in eval mode, no gradient;
  p the training forward's, ``ctx.logits_adv``) — logged as ``fomo/kl``.

Validation and checkpoints use the working weights (the stable model is in the checkpoint, under procedures).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..hooks import LossTerm, StepContext
from . import register_procedure
from ._averaging import WeightAveraging, check_choice, plain_model

CONSOLIDATE = ("step", "phase")
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def layers_to_forget(model: nn.Module, prefixes: tuple[str, ...], last: int) -> list[tuple[str, nn.Module]]:
    """The conv / linear modules whose names start with one of ``prefixes``, or else the last ``last`` of them."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYERS)]
    if prefixes:
        chosen = [(n, m) for n, m in layers if any(n == p or n.startswith(p + ".") for p in prefixes)]
        if not chosen:
            raise ConfigError(f"fomo.modules = {list(prefixes)} matches no conv / linear module of the model; its "
                              f"conv / linear modules are: {', '.join(n for n, _ in layers)}.")
        return chosen
    return layers[-last:]


@torch.no_grad()
def forget(model: nn.Module, layers: list[tuple[str, nn.Module]], fraction: float, generator: torch.Generator) -> int:
    """Re-initialise each weight entry of ``layers`` with probability ``fraction`` (fresh values from the module's
    ``reset_parameters``, drawn under a seed taken from ``generator``); returns how many entries were replaced."""
    replaced = 0
    for _, module in layers:
        w = module.weight
        mask = torch.rand(w.shape, generator=generator) < fraction
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        fresh = copy.deepcopy(module).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh.reset_parameters()
        mask = mask.to(w.device)
        w.copy_(torch.where(mask, fresh.weight.to(w.device, w.dtype), w))
        replaced += int(mask.sum())
    return replaced


class FOMOConsistency(LossTerm):
    """``consistency · KL(p_s(x_adv) ‖ p(x_adv))`` after the first forgetting (FOMO's relearning phase)."""

    name = "fomo"

    def __init__(self, procedure: "FOMO"):
        self.procedure = procedure

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        proc = self.procedure
        if not proc.forgettings or proc.consistency == 0.0:
            zero = torch.zeros((), device=ctx.x.device)
            return {"loss": zero, "kl": zero}
        stable = proc.ensure(plain_model(ctx.model))  # made here too after a mid-epoch resume
        with torch.no_grad(), ctx.autocast():
            target = stable(ctx.result.x_adv).float()
        logits = ctx.logits_adv if ctx.logits_adv is not None else ctx.model(ctx.result.x_adv)
        kl = F.kl_div(F.log_softmax(logits.float(), dim=1), F.softmax(target, dim=1), reduction="batchmean")
        return {"loss": proc.consistency * kl, "kl": kl.detach()}


@register_procedure
class FOMO(WeightAveraging):
    """Forgetting, relearning and consolidation (see the module docstring)."""

    name = "fomo"
    provides_eval_model = False  # the stable model is a teacher here, not the model evaluated

    def __init__(self, *, start_epoch: int = 0, every: int = 5, fraction: float = 0.1, modules: Any = (),
                 last: int = 2, decay: float = 0.999, consolidate: str = "step", consistency: float = 1.0,
                 seed: int = 0):
        super().__init__(buffers="average", use_for=())
        for key, value, low in (("start_epoch", start_epoch, 0), ("every", every, 1), ("last", last, 1),
                                ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < low:
                raise ConfigError(f"fomo.{key} must be a whole number >= {low}, got {value!r}.")
        self.start_epoch, self.every, self.last, self.seed = int(start_epoch), int(every), int(last), int(seed)
        self.fraction = float(fraction)
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"fomo.fraction is the share of a layer's weights re-initialised at each forgetting, in "
                              f"[0, 1]; got {fraction!r}.")
        self.decay = float(decay)
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"fomo.decay must lie in [0, 1), got {decay!r}.")
        self.consistency = float(consistency)
        if self.consistency < 0:
            raise ConfigError(f"fomo.consistency is a loss weight >= 0, got {consistency!r}.")
        self.consolidate = check_choice("fomo.consolidate", consolidate, CONSOLIDATE)
        if isinstance(modules, str):
            modules = [modules]
        if not isinstance(modules, (list, tuple)) or not all(isinstance(m, str) for m in modules):
            raise ConfigError(f"fomo.modules is a list of module-name prefixes (e.g. [net.layer4, net.linear]); "
                              f"got {modules!r}.")
        self.modules = tuple(modules)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.forgettings = 0  # forgetting steps done
        self.replaced = 0  # weight entries re-initialised in the last one
        self._term = FOMOConsistency(self)

    def loss_terms(self) -> list[LossTerm]:
        return [self._term]

    def is_forgetting_epoch(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.every == 0

    def on_epoch_start(self, model, optimizer, epoch):
        self.ensure(model)
        if not self.is_forgetting_epoch(epoch):
            return
        if self.consolidate == "phase":
            self.fold_in(model, self.decay if self.n_averaged else 0.0)
        layers = layers_to_forget(model, self.modules, self.last)
        self.replaced = forget(model, layers, self.fraction, self.generator)
        self.forgettings += 1

    def after_step(self, model, optimizer, ctx):
        if self.consolidate == "step":
            t = ctx.step + 1
            self.fold_in(model, min(1.0 - 1.0 / (t + 1.0), self.decay))

    def _extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "forgettings": self.forgettings, "replaced": self.replaced}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.forgettings, self.replaced = int(state["forgettings"]), int(state["replaced"])
