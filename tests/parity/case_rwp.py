"""PGD-AT + RWP on CIFAR-10 (configs/cifar10_pgd_at_rwp.yaml) against ChaojianYu/Robust-Weight-Perturbation
AT_AWP_RWP/train_cifar10.py + utils_rwp.py@1aaa83f (``--robustWP 1``, ``LSC_loss=1.7``).

The official loop, as read there: csdongxian/AWP's loop (see case_awp.py, including the first batch of every epoch
after the first attacked in eval mode) without the post-step clean forward (the training statistics come from an
eval-mode pass over the training set at the end of the epoch, which changes no BatchNorm statistic but draws the
attacks' random starts), with ``RobustWeightPerturb.calc_awp``: D = {}, 10 × (both proxies ← model + γ·D̂, proxy_2 in
train mode takes one SGD(0.01) step on −mean(CE_i·1[CE_i < 1.7]) at x_adv, D ← D + (proxy_2 − proxy_1) over
the 'weight' tensors with more than one dimension, D̂ = ‖w‖/(‖D‖ + 1e-20)·D with one norm over all of them); the
model is perturbed by γ·D̂, trained, and γ·D̂ subtracted after ``opt.step()``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .case_awp import EVAL_FIRST_BATCH, add_into_weights
from .case_pgd_at import attack_pgd, rice_piecewise
from .harness import (Case, compare_lockstep, optimizer_schedule, parity_batches, recipe_hint, robustrain_run,
                      trainer_generator)
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 4, 5, 16
SHRINK = {"model.kwargs": {"width": 4}, "schedule.milestones": [2, 3]}
EPS20 = 1e-20
LSC = 1.7


# the official script's settings (train_cifar10.py defaults, LSC_loss 1.7), checked on the unshrunk recipe
OFFICIAL = {
    'train.epochs': 200,
    'data.batch_size': 128,
    'optim.name': 'sgd',
    'optim.lr': 0.1,
    'optim.momentum': 0.9,
    'optim.weight_decay': 0.0005,
    'threat.eps': 8/255,
    'attack.steps': 10,
    'attack.step': 2/255,
    'attack.restarts': 1,
    'schedule.name': 'multistep',
    'schedule.milestones': [100, 150],
    'schedule.factors': ['1/10', '1/100'],
    'schedule.at': 'batch_end',
    'schedule.count_from': 0,
    'weight_perturbation.gamma': 0.01,
    'weight_perturbation.c_min': 1.7,
    'weight_perturbation.steps': 10,
}


def rwp_direction(model, proxy_1, proxy_2, x_adv, y, gamma, c_min=LSC, steps=10):
    """calc_awp of utils_rwp.py; the proxy difference proxy_2 − proxy_1 taken exactly as the SGD(0.01) step
    (by design, see case_awp.awp_direction)."""
    names = [k for k, w in model.state_dict().items() if w.dim() > 1 and "weight" in k]
    params = dict(model.named_parameters())
    diff, diff_scale = {}, {}
    for _ in range(steps):
        proxy_1.load_state_dict(model.state_dict())
        proxy_2.load_state_dict(model.state_dict())
        add_into_weights(proxy_1, diff_scale, gamma)
        add_into_weights(proxy_2, diff_scale, gamma)
        proxy_2.train()
        loss = nn.CrossEntropyLoss(reduction="none")(proxy_2(x_adv), y)
        indicator = (loss < c_min).float()
        loss = -1 * loss.mul(indicator).mean()
        proxy_opt = torch.optim.SGD(proxy_2.parameters(), lr=0.01)
        proxy_opt.zero_grad()
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in proxy_2.named_parameters()}
        proxy_opt.step()
        step = {k: -0.01 * grads[k] for k in names}
        diff = step if not diff else {k: diff[k] + step[k] for k in names}
        d_all = torch.cat([diff[k].view(-1) for k in names])
        w_all = torch.cat([params[k].detach().view(-1) for k in names])
        scale = w_all.norm() / (d_all.norm() + EPS20)
        diff_scale = {k: scale * diff[k] for k in names}
    return diff_scale


def official_loop(model, batches, *, epochs, lr_max, eps, alpha, iters, gamma, seed, extra_forwards=True):
    """``extra_forwards=False``: the aligned run, without the restart-scoring forward (it only moves BatchNorm
    statistics)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=0.9, weight_decay=5e-4)
    proxy_1, proxy_2 = copy.deepcopy(model), copy.deepcopy(model)
    lr_schedule = rice_piecewise(lr_max, epochs)
    gen = trainer_generator(seed)
    n = len(batches)
    schedule = []
    model.train()
    for epoch in range(epochs):
        for i, (x, y) in enumerate(batches):
            opt.param_groups[0].update(lr=lr_schedule(epoch + (i + 1) / n))
            delta = attack_pgd(model, x, y, eps, alpha, iters, gen, score_forward=extra_forwards)
            x_adv = torch.clamp(x + delta, 0, 1)
            model.train()
            diff = rwp_direction(model, proxy_1, proxy_2, x_adv, y, gamma)
            add_into_weights(model, diff, gamma)
            loss = F.cross_entropy(model(x_adv), y)
            schedule.append(optimizer_schedule(opt))
            opt.zero_grad()
            loss.backward()
            opt.step()
            add_into_weights(model, diff, -gamma)
            yield opt
        model.eval()  # the end-of-epoch evaluation passes; the next epoch starts without model.train()
    return schedule


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)

    def references(new_model, cfg):
        wp = cfg.weight_perturbation
        kw = dict(epochs=EPOCHS, lr_max=cfg.optim.lr, eps=cfg.threat.eps, alpha=cfg.attack["step"],
                  iters=cfg.attack["steps"], gamma=wp["gamma"], seed=cfg.seed)
        official, aligned = new_model(), new_model()
        return {"official": (official, official_loop(official, batches, **kw)),
                "aligned": (aligned, official_loop(aligned, batches, extra_forwards=False, **kw))}

    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK, lockstep=references)
    cfg = ours.cfg
    wp = cfg.weight_perturbation
    hints = [recipe_hint(cfg.attack.get("first_batch_bn_mode") == "eval", EVAL_FIRST_BATCH),
             recipe_hint(wp.get("c_min") == LSC and wp.get("steps") == 10, "official RWP: c_min 1.7, 10 steps")]
    return compare_lockstep(CASE, ours, constants=recipe_constants(CASE.recipe, OFFICIAL),
                   hints=hints, buffers_by_design=BUFFERS)


BUFFERS = ("the official attack's restart-scoring forward (train mode) moves only the BatchNorm running statistics")

CASE = Case(
    recipe="cifar10_pgd_at_rwp",
    official="ChaojianYu/Robust-Weight-Perturbation AT_AWP_RWP/train_cifar10.py + utils_rwp.py@1aaa83f",
    behaviour="code (Rice piecewise lr at the batch end, RWP γ 0.01, c_min 1.7, 10 steps, global scaling)",
    by_design="BN running statistics: " + BUFFERS + "; the proxy difference taken exactly as the SGD(0.01) step "
              "(see AWP); the end-of-epoch train-set evaluation (random draws only) not run; normalisation inside "
              "the model; lockstep comparison",
    run=run,
)
