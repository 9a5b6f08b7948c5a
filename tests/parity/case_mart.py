"""MART on CIFAR-10 (configs/cifar10_mart.yaml) against YisenWang/MART train_wideresnet.py + mart.py@2d83e17.

The official loop, as read there: the network on raw [0, 1] inputs, SGD(lr 0.1, momentum 0.9, weight decay 7e-4);
for epoch = 1..E (counted from 1) ``adjust_learning_rate``: lr·0.001 from epoch 100, else lr·0.01 from 90, else
lr·0.1 from 75; ``model.train()``, then per batch ``mart_loss``: model.eval(); x′ = x + 0.001·N(0, I) (not
clipped); 10 × (mean CE at x′, x′ ← x′ + 0.007·sign ∇, min/max onto [x − ε, x + ε], clamp to [0, 1]);
model.train(); logits = f(x), logits_adv = f(x′); new_y = the most likely class of p(x′) other than y (argsort);
loss = CE(logits_adv, y) + NLL(log(1.0001 − p(x′) + 1e-12), new_y) + β·(1/B)·Σ_i Σ_k KLDiv(log(p(x′)+1e-12),
p(x))·(1.0000001 − p_y(x)); step.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .harness import (Case, box, compare_lockstep, has_input_normalisation, optimizer_schedule, parity_batches,
                      recipe_hint, robustrain_run, trainer_generator)
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 4, 5, 16
MILESTONES = (2, 3, 4)  # the script's 75, 90, 100 (counted from 1), scaled so that all three act within 4 epochs
SHRINK = {"model.name": "preact_resnet18", "model.kwargs": {"width": 4}, "schedule.milestones": list(MILESTONES)}


# the official script's settings (train_wideresnet.py defaults), checked on the unshrunk recipe
OFFICIAL = {
    'train.epochs': 90,
    'data.batch_size': 128,
    'optim.name': 'sgd',
    'optim.lr': 0.1,
    'optim.momentum': 0.9,
    'optim.weight_decay': 0.0007,
    'threat.eps': 0.031,
    'attack.steps': 10,
    'attack.step': 0.007,
    'attack.init_std': 0.001,
    'objective.beta': 6.0,
    'schedule.name': 'multistep',
    'schedule.milestones': [75, 90, 100],
    'schedule.factors': [0.1, 0.01, 0.001],
    'schedule.count_from': 1,
}


def adjust_learning_rate(opt, epoch, lr, milestones=MILESTONES):
    new = lr
    if epoch >= milestones[2]:
        new = lr * 0.001
    elif epoch >= milestones[1]:
        new = lr * 0.01
    elif epoch >= milestones[0]:
        new = lr * 0.1
    for group in opt.param_groups:
        group["lr"] = new


def mart_loss(model, x_natural, y, optimizer, step_size, epsilon, perturb_steps, beta, gen):
    kl = nn.KLDivLoss(reduction="none")
    model.eval()
    batch_size = len(x_natural)
    delta = 0.001 * torch.randn(x_natural.shape, generator=gen)
    for _ in range(perturb_steps):
        x_adv = (x_natural + delta).requires_grad_()
        with torch.enable_grad():
            loss_ce = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss_ce, [x_adv])[0]
        # official: x′ ← clamp(min(max(x′ + s·sign ∇, x − ε), x + ε), 0, 1), kept here as δ = x′ − x (the same
        # update, robustrain's rounding; see case_trades.py)
        delta = box(x_natural, torch.clamp(delta + step_size * torch.sign(grad.detach()), -epsilon, epsilon))
    model.train()
    x_adv = torch.clamp(x_natural + delta, 0.0, 1.0).detach()
    optimizer.zero_grad()
    logits = model(x_natural)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / batch_size) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    return loss_adv + float(beta) * loss_robust


def official_loop(model, batches, *, epochs, lr, weight_decay, eps, step_size, steps, beta, seed):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    gen = trainer_generator(seed)
    schedule = []
    for epoch in range(1, epochs + 1):
        adjust_learning_rate(opt, epoch, lr)
        model.train()
        for x, y in batches:
            opt.zero_grad()
            loss = mart_loss(model, x, y, opt, step_size, eps, steps, beta, gen)
            schedule.append(optimizer_schedule(opt))
            loss.backward()
            opt.step()
            yield opt
    return schedule


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)

    def references(new_model, cfg):
        model = new_model()
        return {"official": (model, official_loop(
            model, batches, epochs=EPOCHS, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, eps=cfg.threat.eps,
            step_size=cfg.attack["step"], steps=cfg.attack["steps"], beta=cfg.objective["beta"], seed=cfg.seed))}

    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK, lockstep=references)
    cfg = ours.cfg
    hints = [
        recipe_hint(not has_input_normalisation(ours.trainer.model), "MART feeds raw [0,1] inputs: "
                    "model.normalise: false"),
        recipe_hint(cfg.attack.get("clip_init") is False and cfg.attack.get("loss") == "ce",
                    "the official attack: CE from the unclipped x + 0.001·N (loss: ce, clip_init: false)"),
    ]
    return compare_lockstep(CASE, ours, constants=recipe_constants(CASE.recipe, OFFICIAL),
                   hints=hints)


CASE = Case(
    recipe="cifar10_mart",
    official="YisenWang/MART train_wideresnet.py + mart.py@2d83e17",
    behaviour="code (epochs counted from 1, eval-mode CE attack from an unclipped Gaussian start)",
    by_design="PreActResNet-18 (width 4) instead of WRN-34-10; the Gaussian start drawn from robustrain's "
              "generator; lockstep comparison (see case_trades.py)",
    run=run,
)
