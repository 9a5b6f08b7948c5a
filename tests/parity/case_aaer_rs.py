"""RS-AAER on CIFAR-10 (configs/cifar10_aaer_rs.yaml) against tmllab/2023_NeurIPS_AAER CIFAR10/AAER.py@5ad2591.

The official loop, as read there (``--clamp 1 --alpha 1.25`` for RS-AAER, ``--clamp 0 --alpha 1.00`` for N-AAER):
SGD(lr_max 0.2, momentum 0.9, weight decay 5e-4) driven by ``torch.optim.lr_scheduler.CyclicLR(base 0, max lr_max,
up = down = total/2)`` with its default momentum cycling, stepped after every batch. Per batch, model in train mode
throughout (both forwards update the BatchNorm running statistics):

* δ ~ U[−ε, ε] per pixel (``--clamp 1``) or U[−2ε, 2ε] (``--clamp 0``), clipped so that x + δ stays in the box;
* forward at x + δ: its logits z⁰ and per-example CE ℓ⁰ are kept (detached); ∇_δ of the mean CE;
* δ ← δ + α·sign ∇, then clip to [−ε, ε] only with ``--clamp 1``, then the box clip;
* forward at x + δ: per-example CE ℓ (ℓ¹ its detached copy), loss = mean ℓ;
* A = {ℓ⁰ > ℓ¹}, N the rest; when both are non-empty the loss gains
  λ1·(|A|/B)·[λ2·Σ_A(ℓ⁰ − ℓ¹)/|A| + λ3·max(V_A − V_N.item(), 0)] with V_S = mean over S of ‖z⁰ − z‖²₂ (z the
  attached logits at x + δ): the λ2 term is a constant (both losses detached), V_N a number;
* zero_grad, backward, step, scheduler step.

Shared draws and rounding (see harness.box): the start is drawn from robustrain's generator (harness.uniform) and the
box clips are written (x + δ).clamp(0, 1) − x, robustrain's rounding of the official ``clamp(δ, lower − X,
upper − X)``; FGSM's sign would amplify a one-ulp difference to O(1) in 20 steps.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .harness import (Case, cyclic_sgd, box, compare, has_input_normalisation, optimizer_schedule, parity_batches, recipe_hint,
                      require, robustrain_run, trainer_generator, uniform)

EPOCHS, N_BATCHES, BATCH = 4, 5, 32
SHRINK = {"model.kwargs": {"width": 4}}


def official_aaer_loop(model, batches, *, epochs, lr_max, momentum, weight_decay, eps, alpha, noise, project,
                       lam1, lam2, lam3, seed):
    """The official AAER training loop (fp32; normalisation inside the model, ε and α in pixel units).

    ``noise``: radius of the uniform start in units of ε (1 for ``--clamp 1``, 2 for ``--clamp 0``); ``project``:
    ``--clamp``. Returns the (lr, momentum) of every optimiser step."""
    total = epochs * len(batches)
    opt, sched = cyclic_sgd(model, total, lr_max, momentum, weight_decay)
    gen = trainer_generator(seed)
    schedule = []
    model.train()
    for _ in range(epochs):
        for x, y in batches:
            delta = uniform(x, noise * eps, gen)
            delta = box(x, delta).requires_grad_(True)
            out = model(x + delta)
            z0 = out.detach()
            ce = F.cross_entropy(out, y, reduction="none")
            loss_before = ce.detach()
            (grad,) = torch.autograd.grad(ce.mean(), delta)
            delta = delta.detach() + alpha * grad.sign()
            if project:
                delta = torch.clamp(delta, -eps, eps)
            delta = box(x, delta)
            out = model(torch.clamp(x + delta, 0, 1))
            ce = F.cross_entropy(out, y, reduction="none")
            loss_after = ce.detach()
            loss = ce.mean()
            abnormal = loss_before > loss_after
            n_abnormal = int(abnormal.sum())
            if 0 < n_abnormal < len(y):
                v_abnormal = (z0[abnormal] - out[abnormal]).pow(2).sum(1).mean()
                v_normal = (z0[~abnormal] - out[~abnormal]).pow(2).sum(1).mean().item()
                drop = (loss_before - loss_after)[abnormal].sum() / n_abnormal
                gap = torch.clamp(v_abnormal - v_normal, min=0)
                loss = loss + (lam1 * n_abnormal / len(y)) * (lam2 * drop + lam3 * gap)
            schedule.append(optimizer_schedule(opt))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return schedule


def run_aaer(case, *, noise, project):
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)
    ours = robustrain_run(case.recipe, batches, epochs=EPOCHS, overrides=SHRINK)
    cfg = ours.cfg
    require(has_input_normalisation(ours.trainer.model), "the official script normalises the inputs (CIFAR mean/std)")
    (term,) = cfg.regularisers
    require(not term.get("lam2_gradient", False) and not term.get("drop_gradient", False),
            "the official code detaches the λ2 term (lam2_gradient: false)")
    attack = ours.trainer.attack
    require(abs(attack.init_scale - noise) < 1e-12 and attack.project == project,
            f"the official base attack starts from U[-{noise}ε, {noise}ε] and "
            f"{'projects' if project else 'does not project'}")
    model = copy.deepcopy(ours.initial_model)
    schedule = official_aaer_loop(model, batches, epochs=EPOCHS, lr_max=cfg.optim.lr, momentum=cfg.optim.momentum,
                                  weight_decay=cfg.optim.weight_decay, eps=cfg.threat.eps, alpha=attack.step,
                                  noise=noise, project=project, lam1=term["lam1"], lam2=term["lam2"],
                                  lam3=term["lam3"], seed=cfg.seed)
    aaes = sum(log.get("aaer/count", 0.0) for log in ours.logs)
    # steps whose λ3 term carried a gradient (AAEs and normal examples present, V_A > V_N)
    active = sum(0 < log.get("aaer/count", 0.0) < BATCH and log.get("aaer/var_gap", 0.0) > 0 for log in ours.logs)
    require(active > 0, "the λ3 term never carried a gradient in this run: the comparison would not test it")
    hints = [recipe_hint(getattr(attack, "update_bn_stats", False), "the official attack forward updates the BatchNorm "
                         "running statistics: the recipe needs attack.update_bn_stats: true")]
    return compare(case, ours, model, ref_schedule=schedule, extra={"abnormal_examples": aaes, "lam3_steps": active},
                   hints=hints)


def run():
    return run_aaer(CASE, noise=1.0, project=True)


CASE = Case(
    recipe="cifar10_aaer_rs",
    official="tmllab/2023_NeurIPS_AAER CIFAR10/AAER.py@5ad2591",
    behaviour="code (λ2 term detached as in the code; CyclicLR with momentum cycling; both forwards update BN "
              "statistics)",
    by_design="normalisation inside the model with ε, α in pixel units (the script normalises the data and divides "
              "ε, α by σ); random start drawn from robustrain's generator; final model, no checkpoint selection",
    run=run,
)
