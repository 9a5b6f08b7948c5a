"""CURE on CIFAR-10 (configs/cifar10_cure.yaml) against NeurAI-Lab/CURE utilities/train.py (``train_cure``,
``update_ema_model_variables``) + train_util/adversarial_loss.py (``cure_loss_dual``)@03fe414, ``--reinit_mode rgp``.

The official loop, as read there: the network on raw [0, 1] inputs, SGD(lr 0.1, momentum 0.9, weight decay); for
epoch = 1..E ``adjust_learning_rate`` (lr × 0.1 when the epoch, counted from 1, is a milestone); ``model.train()``,
``model_ema.train()``; per batch ``cure_loss_dual``: model.eval(); x′ = x + 0.001·N(0, I) (not clipped); 10 ×
(KLDivLoss(sum)(log_softmax f(x′), softmax f(x)), x′ ← x′ + 0.007·sign ∇, onto [x − ε, x + ε], clamp to [0, 1]);
model.train(); f(x), t(x), f(x′), t(x′) in train mode (t: the EMA teacher, outputs detached); loss = w_nat·CE(f(x)) +
w_rob·CE(f(x′)) + KL(t(x) ‖ f(x)) + KL(t(x′) ‖ f(x′)) (sum / B); backward; in every parameter whose name has neither
``linear`` nor ``fc`` the gradient entries below ``np.percentile(|g|, 100·p)`` are zeroed; step; global_step += 1;
``if torch.rand(1) < r``: teacher parameters ← a·t + (1 − a)·θ, a = min(1 − 1/(global_step + 1), 0.999).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .harness import (Case, box, compare_lockstep, has_input_normalisation, optimizer_schedule, parity_batches,
                      recipe_constants, recipe_hint, robustrain_run, trainer_generator)

EPOCHS, N_BATCHES, BATCH = 4, 5, 16
MILESTONES = (3,)  # the script's 100 (counted from 1), scaled into 4 epochs
RATE = 0.5  # revision probability raised from 0.2 so that 20 steps revise the teacher often (the case counts them)
SHRINK = {"model.kwargs": {"width": 4}, "schedule.milestones": list(MILESTONES),
          "procedures": [{"name": "cure", "percentile": 0.3, "w_nat": 0.1, "w_rob": 0.9, "gamma": 1.0,
                          "decay": 0.999, "rate": RATE, "seed": 0}]}

# the README's parameter block and the code's defaults, checked on the unshrunk recipe
OFFICIAL = {
    'train.epochs': 120,
    'data.batch_size': 128,
    'optim.name': 'sgd',
    'optim.lr': 0.1,
    'optim.momentum': 0.9,
    'optim.weight_decay': 0.0007,
    'threat.eps': 0.031,
    'attack.steps': 10,
    'attack.step': 0.007,
    'attack.init_std': 0.001,
    'schedule.milestones': [100, 150],
    'schedule.count_from': 1,
    'procedures': [{'name': 'cure', 'percentile': 0.3, 'w_nat': 0.1, 'w_rob': 0.9, 'gamma': 1.0, 'decay': 0.999,
                    'rate': 0.2}],
}


def kl_attack(model, x, step_size, epsilon, steps, gen):
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    delta = 0.001 * torch.randn(x.shape, generator=gen)  # the official torch.randn(...) from the shared generator
    target = F.softmax(model(x), dim=1)
    for _ in range(steps):
        x_adv = (x + delta).requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), target)
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        delta = box(x, torch.clamp(delta + step_size * torch.sign(grad.detach()), -epsilon, epsilon))
    model.train()
    return torch.clamp(x + delta, 0.0, 1.0).detach()


def kl(student, teacher):
    return F.kl_div(F.log_softmax(student, dim=1), F.softmax(teacher, dim=1), reduction="sum") / student.shape[0]


def official_loss(out_nat, out_adv, t_nat, t_adv, y, *, w_nat, w_rob, gamma):
    """cure_loss_dual: weighted CE on x and x′ plus gamma times the KL to the teacher on both."""
    return w_nat * F.cross_entropy(out_nat, y) + w_rob * F.cross_entropy(out_adv, y) \
        + gamma * (kl(out_nat, t_nat) + kl(out_adv, t_adv))


def official_conserve(model, p):
    """The rgp mask: in every parameter tensor whose name has no linear / fc, gradients below the tensor's
    ``p``-quantile of magnitude are zeroed (numpy's percentile, as the official code)."""
    for name, w in model.named_parameters():
        if "linear" in name or "fc" in name:
            continue
        mag = np.abs(w.grad.detach().numpy())
        w.grad[torch.from_numpy(mag < np.percentile(mag, p * 100))] = 0.0


def official_revise(teacher, model, global_step, decay):
    """The teacher's EMA with the official warm-up min(1 − 1/(step + 1), decay)."""
    a = min(1 - 1 / (global_step + 1), decay)
    with torch.no_grad():
        for tp, sp in zip(teacher.parameters(), model.parameters()):
            tp.mul_(a).add_(sp, alpha=1 - a)


def official_loop(model, batches, *, epochs, lr, weight_decay, eps, step_size, steps, seed, w_nat, w_rob, gamma, p,
                  decay, rate, coin_seed, revisions, official_order=True):
    teacher = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    gen = trainer_generator(seed)
    coin = torch.Generator().manual_seed(coin_seed)  # official: torch.rand(1) from the global RNG
    global_step = 0
    schedule = []
    for epoch in range(1, epochs + 1):
        if epoch in MILESTONES:
            opt.param_groups[0]["lr"] *= 0.1
        model.train(), teacher.train()
        for x, y in batches:
            x_adv = kl_attack(model, x, step_size, eps, steps, gen)
            opt.zero_grad()
            if official_order:
                out_nat, t_nat = model(x), teacher(x).detach()
                out_adv, t_adv = model(x_adv), teacher(x_adv).detach()
            else:  # robustrain's order: the objective's f(x′) first, then the term's f(x), t(x), t(x′)
                out_adv = model(x_adv)
                out_nat, t_nat, t_adv = model(x), teacher(x).detach(), teacher(x_adv).detach()
            loss = official_loss(out_nat, out_adv, t_nat, t_adv, y, w_nat=w_nat, w_rob=w_rob, gamma=gamma)
            schedule.append(optimizer_schedule(opt))
            loss.backward()
            official_conserve(model, p)
            opt.step()
            global_step += 1
            if torch.rand(1, generator=coin) < rate:
                revisions.append(global_step)
                official_revise(teacher, model, global_step, decay)
            yield opt
    return schedule


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)
    revisions: list[int] = []

    def references(new_model, cfg):
        proc = cfg.procedures[0]
        kw = dict(epochs=EPOCHS, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, eps=cfg.threat.eps,
                  step_size=cfg.attack["step"], steps=cfg.attack["steps"], seed=cfg.seed, w_nat=proc["w_nat"],
                  w_rob=proc["w_rob"], gamma=proc["gamma"], p=proc["percentile"], decay=proc["decay"],
                  rate=proc["rate"], coin_seed=proc["seed"])
        official, aligned = new_model(), new_model()
        return {"official": (official, official_loop(official, batches, revisions=revisions, **kw)),
                "aligned": (aligned, official_loop(aligned, batches, revisions=[], official_order=False, **kw))}

    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK, lockstep=references)
    cfg = ours.cfg
    assert 0 < len(revisions) < EPOCHS * N_BATCHES, f"{len(revisions)} teacher revisions: the case does not test them"
    hints = [
        recipe_hint(not has_input_normalisation(ours.trainer.model), "CURE feeds raw [0,1] inputs: "
                    "model.normalise: false"),
        recipe_hint(cfg.attack.get("clip_init") is False, "the official first gradient is at the unclipped "
                    "x + 0.001·N: the attack needs clip_init: false"),
        recipe_hint(cfg.attack.get("bn_mode") == "eval", "the official attack runs in eval mode"),
        recipe_hint(cfg.objective.get("name") == "ce", "CURE's robust term is CE on x′ (objective: ce)"),
    ]
    result = compare_lockstep(CASE, ours, constants=recipe_constants(CASE.recipe, OFFICIAL), hints=hints,
                              buffers_by_design=BUFFERS)
    result.extra["revisions"] = f"{len(revisions)} of {EPOCHS * N_BATCHES} steps"
    return result


BUFFERS = ("robustrain's objective runs f(x′) before the term's f(x) (the official loss: f(x) first); in train mode "
           "both use batch statistics, so only the order of the BatchNorm running-statistics updates differs")

CASE = Case(
    recipe="cifar10_cure",
    official="NeurAI-Lab/CURE utilities/train.py + train_util/adversarial_loss.py@03fe414 (--reinit_mode rgp)",
    behaviour="code (rgp: per-layer gradient-percentile mask, CE on x and x′, KL to a train-mode EMA teacher revised "
              "with probability r)",
    by_design="BN running statistics: " + BUFFERS + "; Gaussian start and the revision coin drawn from robustrain's "
              "generators (official: the global RNG); revision rate 0.5 and one milestone at epoch 3 for the 20-step "
              "case; PreActResNet-18 width 4; lockstep comparison (the teacher of each reference follows its own "
              "steps)",
    run=run,
)
