"""R-LAP, official-code behaviour, on CIFAR-10 (configs/cifar10_lap_rs.yaml) against tmllab/2024_ICML_LAP
CIFAR10/LAP.py@5a4bd23 (utils.py ``diff_in_weights`` / ``add_into_weights``, EPS 1e-20; README: R-LAP ``--clamp 1
--alpha 1.25 --beta 0.002 --gamma 0.30``, N-LAP ``--clamp 0 --alpha 1.00 --beta 0.001``, V-LAP ``--clamp 1 --alpha
1.00 --delta-init zero --beta 0.03``; ``--layer-number 21``).

The official loop, as read there: SGD(lr_max 0.2, momentum 0.9, weight decay 5e-4) driven by
``torch.optim.lr_scheduler.CyclicLR(base 0, max lr_max, up = down = total/2)`` (default momentum cycling), stepped after
every batch. The model is in train mode (both forwards update the BatchNorm running statistics). Per batch:

* δ = 0 (``--delta-init zero``), U[−ε, ε] (``--clamp 1``) or U[−2ε, 2ε] (``--clamp 0``), clipped to the box;
* forward at x + δ, mean CE; ``proxy`` ← the model's state (weights and buffers), ``proxy_opt`` ← the optimiser's
  state; zero_grad, backward (weight gradients *and* ∇_δ from this one pass), **optimizer.step()**;
* δ ← δ + α·sign ∇_δ, clip to [−ε, ε] only with ``--clamp 1``, box clip;
* Δ_k = w_k(after the step) − w_k(before) for every state-dict entry with more than one dimension and "weight" in its
  name (the 21 conv / linear weights of PreActResNet-18), scaled to ‖w_k(before)‖·Δ_k/(‖Δ_k‖ + 1e-20);
* the model and the optimiser are restored from ``proxy`` / ``proxy_opt``; then, counting those weights in
  ``named_parameters`` order (l = 1, 2, ...), w_l += (1 − (ln l / ln 21)^γ)·β·Δ_l;
* forward at clamp(x + δ, 0, 1) with the perturbed weights, mean CE, zero_grad, backward, step — the perturbation is
  never removed; scheduler step.

The optimiser restore: ``proxy_opt.load_state_dict(opt.state_dict())`` deep-copied the state in torch 2.0.1, the
version the code pins (requirements.txt), so the restore undoes the first step's momentum-buffer update; from torch
2.1 on ``load_state_dict`` keeps the given tensors (pytorch/pytorch#106082) and the same script would keep it. The
reference takes the pinned version's semantics (a deep copy), as robustrain's ``behaviour: code`` does.

Rounding (see harness.box): the box clips and the perturbation's product are written in robustrain's floating-point
order (``Δ·((β·λ_l)·‖w‖/(‖Δ‖ + 1e-20))``); every step checks the perturbation against the official expression
(``(λ_l·β)·(‖w‖/(‖Δ‖ + EPS)·Δ)``) to 1e-5.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .harness import (Case, cyclic_sgd, box, compare, has_input_normalisation, optimizer_schedule, parity_batches, recipe_hint,
                      require, robustrain_run, trainer_generator, uniform)

EPOCHS, N_BATCHES, BATCH = 4, 5, 32
SHRINK = {"model.kwargs": {"width": 4}}
EPS = 1e-20


def official_lap_loop(model, batches, *, epochs, lr_max, momentum, weight_decay, eps, alpha, delta_init, clamp,
                      beta, gamma, layer_number, seed):
    """LAP.py's training loop (fp32; normalisation inside the model, ε and α in pixel units). Returns the
    (lr, momentum) of every step and the largest relative difference between the applied perturbation and the
    official expression for it."""
    total = epochs * len(batches)
    opt, sched = cyclic_sgd(model, total, lr_max, momentum, weight_decay)
    gen = trainer_generator(seed)
    keys = [k for k, w in model.state_dict().items() if w.dim() > 1 and "weight" in k]  # diff_in_weights' entries
    schedule, worst = [], 0.0
    for _ in range(epochs):
        for x, y in batches:
            model.train()
            if delta_init == "zero":
                delta = torch.zeros_like(x)
            else:
                delta = uniform(x, eps if clamp else 2 * eps, gen)
            delta = box(x, delta).requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            proxy = {k: v.detach().clone() for k, v in model.state_dict().items()}
            proxy_opt = copy.deepcopy(opt.state_dict())  # torch 2.0.1's load_state_dict copies
            schedule.append(optimizer_schedule(opt))
            opt.zero_grad()
            loss.backward()
            opt.step()
            grad = delta.grad.detach()
            delta = delta.detach() + alpha * grad.sign()
            if clamp:
                delta = torch.clamp(delta, -eps, eps)
            delta = box(x, delta)
            after = model.state_dict()
            diffs = {k: after[k].detach() - proxy[k] for k in keys}
            model.load_state_dict(proxy)
            opt.load_state_dict(proxy_opt)
            count = 0
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in diffs:
                        count += 1
                        layer_weight = 1.0 - np.power(np.log(count) / np.log(layer_number), gamma)
                        d, w_norm = diffs[name], proxy[name].norm()
                        v = d * ((beta * layer_weight) * w_norm / (d.norm() + EPS))
                        official = layer_weight * beta * (w_norm / (d.norm() + EPS) * d)
                        scale = official.abs().max().item()
                        if scale > 0:
                            worst = max(worst, (v - official).abs().max().item() / scale)
                        param.add_(v)
            loss = F.cross_entropy(model(torch.clamp(x + delta, 0, 1)), y, reduction="none").mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return schedule, worst


VARIANTS = {  # README rows: (delta_init, --clamp, attack name, start radius in ε)
    "fgsm_rs": ("random", 1, "fgsm_rs", 1.0),
    "nfgsm": ("random", 0, "nfgsm", 2.0),
    "fgsm": ("zero", 1, "fgsm", 0.0),
}


def run_lap(case, variant):
    delta_init, clamp, attack_name, radius = VARIANTS[variant]
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)
    ours = robustrain_run(case.recipe, batches, epochs=EPOCHS, overrides=SHRINK)
    cfg = ours.cfg
    require(has_input_normalisation(ours.trainer.model), "the official script normalises the inputs (CIFAR mean/std)")
    wp = cfg.weight_perturbation
    require(wp["name"] == "lap" and wp.get("behaviour") == "code",
            "the official code steps the optimiser for Δ and keeps the perturbation "
            "(weight_perturbation.behaviour: code)")
    attack = ours.trainer.attack
    require(attack.name == attack_name and attack.init_scale == radius and attack.project == bool(clamp),
            f"{variant}: the official attack starts from U[−{radius}ε, {radius}ε] and "
            f"{'projects' if clamp else 'does not project'}")
    lap = ours.trainer.weight_perturbation
    n_layers = len(lap.selected(ours.trainer.model))
    require(n_layers == 21,
            f"the official --layer-number is 21 (PreActResNet-18's conv/linear weights); got {n_layers}")
    model = copy.deepcopy(ours.initial_model)
    schedule, worst = official_lap_loop(
        model, batches, epochs=EPOCHS, lr_max=cfg.optim.lr, momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay, eps=cfg.threat.eps, alpha=attack.step, delta_init=delta_init,
        clamp=clamp, beta=lap.beta, gamma=lap.gamma, layer_number=21, seed=cfg.seed)
    require(worst <= 1e-5, f"the reference's perturbation differs from the official expression by {worst:.3g}")
    hints = [recipe_hint(getattr(attack, "update_bn_stats", False), "the official forward at x + δ₀ updates the "
                         "BatchNorm running statistics: the recipe needs attack.update_bn_stats: true")]
    return compare(case, ours, model, ref_schedule=schedule, extra={"perturbation_vs_official": worst}, hints=hints)


def run():
    return run_lap(CASE, "fgsm_rs")


CASE = Case(
    recipe="cifar10_lap_rs",
    official="tmllab/2024_ICML_LAP CIFAR10/LAP.py@5a4bd23",
    behaviour="code (Δ = one real optimiser step on CE at x + δ₀, perturbation kept; optimiser state restored as "
              "torch 2.0.1 does; CyclicLR with momentum cycling); weight_perturbation.behaviour: paper is the paper's",
    by_design="normalisation inside the model with ε, α in pixel units (the script normalises the data); random start "
              "from robustrain's generator; robustrain computes Δ's gradient in its own forward at x + δ₀ (the script "
              "reuses the attack's), same weights and batch statistics",
    run=run,
)
