"""PGD-AT + weight averaging on CIFAR-10 (configs/cifar10_pgd_at_wa.yaml, the ``ema`` procedure) against
fzjcdt/FastAT_Benchmark fast_at/pgd_at.py + main.py + configs/cifar10/{common,pgd_at_wa}.yaml@b99c0de.

The loop and its weight average: see fastat.py. The attack is torchattacks' ``PGD(model, eps=8/255, alpha=2/255,
steps=10)`` (random_start=True), as read in torchattacks 3.5.1 attacks/pgd.py + attack.py (the benchmark's
requirements.txt: torchattacks>=3.5.0): the model switched to eval mode for the attack and back to train mode after
it (so the BatchNorm statistics are left alone); x′ = clamp(x + U[−ε, ε], 0, 1); 10 × (``nn.CrossEntropyLoss()``
(plain CE, batch mean) at x′, x′ ← x′ + α·sign ∇, δ = clamp(x′ − x, −ε, ε), x′ = clamp(x + δ, 0, 1)); the last iterate.

What this case checks: the training weights and the averaged weights and BatchNorm statistics of robustrain's
``ema`` procedure against ``exp_avg`` after the last step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fastat
from .harness import Case, box, recipe_hint, uniform

EPOCHS, N_BATCHES, BATCH = 4, 5, 16

OFFICIAL = {
    **fastat.OFFICIAL,
    'attack.name': 'pgd',
    'attack.steps': 10,
    'attack.step': 2 / 255,
    'attack.restarts': 1,
    'attack.keep_best': False,
}


def torchattacks_pgd(cfg, gen):
    """torchattacks' PGD in δ form with robustrain's rounding of the box clip (harness.box): x + δ with δ =
    box(x, clamp(δ + α·sign ∇, −ε, ε)) is clamp(x + clamp(x′ + α·sign ∇ − x, −ε, ε), 0, 1) up to one rounding."""
    eps, alpha, steps = cfg.threat.eps, cfg.attack["step"], cfg.attack["steps"]

    def attack(model, x, y):
        model.eval()
        delta = box(x, uniform(x, eps, gen)).requires_grad_(True)
        for _ in range(steps):
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = box(x, torch.clamp(delta.detach() + alpha * grad.sign(), -eps, eps)).requires_grad_(True)
        model.train()
        return x + delta.detach()
    return attack


def hints(cfg):
    return [recipe_hint(cfg.attack.get("bn_mode") == "eval" and not cfg.attack.get("update_bn_stats"),
                        "torchattacks runs the attack in eval mode: attack.bn_mode: eval, update_bn_stats: false"),
            recipe_hint(not cfg.attack.get("label_smoothing"), "torchattacks' PGD ascends plain CE")]


def run():
    return fastat.run_case(CASE, epochs=EPOCHS, n_batches=N_BATCHES, batch=BATCH, attack=torchattacks_pgd,
                           hints=hints, official=OFFICIAL)


CASE = Case(
    recipe="cifar10_pgd_at_wa",
    official="fzjcdt/FastAT_Benchmark fast_at/pgd_at.py + main.py@b99c0de (torchattacks 3.5.1 PGD)",
    behaviour="code (EMA after every step over the whole state dict, BN statistics averaged, first update = θ₁, no "
              "decay warm-up; torchattacks' PGD-10 in eval mode on plain CE; label-smoothed CE loss; OneCycleLR per "
              "epoch)",
    by_design=fastat.BY_DESIGN + "; start drawn from robustrain's generator (torchattacks: the global RNG); the "
              "projection and box clip with robustrain's rounding (δ form)",
    run=run,
)
