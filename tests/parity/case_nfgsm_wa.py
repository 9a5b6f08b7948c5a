"""N-FGSM + weight averaging on CIFAR-10 (configs/cifar10_nfgsm_wa.yaml, the ``ema`` procedure) against
fzjcdt/FastAT_Benchmark fast_at/n_fgsm.py + main.py + configs/cifar10/{common,n_fgsm}.yaml@b99c0de.

The loop and its weight average: see fastat.py. The attack, as read in n_fgsm.py, on the model in train mode (its
forward updates the BatchNorm statistics): x′ = clamp(x + U[−2ε, 2ε], 0, 1), one forward and ``loss.backward()``
of the *training criterion* (CE with label smoothing 0.4) for ∇x′, x_adv = clamp(x′ + ε·sign ∇, 0, 1) (no projection
onto the ε-ball).

What this case checks: the training weights and the averaged weights and BatchNorm statistics of robustrain's
``ema`` procedure against ``exp_avg`` after the last step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fastat
from .harness import Case, box, recipe_hint, require, uniform

EPOCHS, N_BATCHES, BATCH = 4, 5, 32
UNIF = 2.0  # U[-2ε, 2ε]

OFFICIAL = {
    **fastat.OFFICIAL,
    'attack.step': 8 / 255,
    'attack.init_scale': 2.0,
    'attack.project': False,
    'attack.label_smoothing': 0.4,  # the attack's gradient is of the training criterion
}


def nfgsm_attack(cfg, gen):
    """n_fgsm.py's attack (train mode), its noise from ``gen``, the box clip with robustrain's rounding."""
    require(cfg.attack.get("init_scale") == UNIF and cfg.attack.get("project") is False,
            "the official N-FGSM draws U[-2ε, 2ε] and does not project")
    eps, smoothing = cfg.threat.eps, cfg.train.label_smoothing

    def attack(model, x, y):
        eta = box(x, uniform(x, UNIF * eps, gen)).requires_grad_(True)
        loss = F.cross_entropy(model(x + eta), y, label_smoothing=smoothing)
        (grad,) = torch.autograd.grad(loss, eta)
        return x + box(x, eta.detach() + eps * grad.sign())
    return attack


def hints(cfg):
    return [recipe_hint(cfg.attack.get("label_smoothing", 0.0) == cfg.train.label_smoothing, "the official attack "
                        "ascends the training criterion (CE with label smoothing 0.4): attack.label_smoothing: 0.4"),
            recipe_hint(cfg.attack.get("update_bn_stats"), "the official attack forward updates the BatchNorm running "
                        "statistics: the recipe needs attack.update_bn_stats: true")]


def run():
    return fastat.run_case(CASE, epochs=EPOCHS, n_batches=N_BATCHES, batch=BATCH, attack=nfgsm_attack, hints=hints,
                           official=OFFICIAL)


CASE = Case(
    recipe="cifar10_nfgsm_wa",
    official="fzjcdt/FastAT_Benchmark fast_at/n_fgsm.py + main.py@b99c0de",
    behaviour="code (EMA after every step over the whole state dict, BN statistics averaged, first update = θ₁, no "
              "decay warm-up; label-smoothed CE in the attack and the loss; OneCycleLR per epoch)",
    by_design=fastat.BY_DESIGN + "; noise drawn from robustrain's generator; box clip with robustrain's rounding",
    run=run,
)
