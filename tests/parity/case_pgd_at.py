"""PGD-AT, Rice et al.'s robust-overfitting recipe (configs/cifar10_pgd_at.yaml), against
locuslab/robust_overfitting train_cifar.py@c47a25c (``--lr-schedule piecewise``, the default).

The official loop, as read there: PreActResNet-18 on normalised inputs, SGD(lr_max 0.1, momentum 0.9, weight decay
5e-4), lr set before every batch to ``lr_schedule(epoch + (i+1)/n)`` with ``t/E < 0.5 → lr_max``, ``< 0.75 →
lr_max/10.``, else ``lr_max/100.``; ``model.train()`` for the whole epoch. Per batch: ``attack_pgd``: δ ~ U[−ε, ε]
clipped to the box, 10 × (forward at x + δ, mean CE, backward, δ ← clamp(δ + α·sign ∇, −ε, ε), box clip), then
one more forward at x + δ to score the restart (kept when its loss ≥ 0, i.e. always, with one restart); training
forward at clamp(x + δ, 0, 1), mean CE, step; then a clean forward at x (for the logged training accuracy). All of
them in train mode, so every one moves the BatchNorm running statistics.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .harness import (Case, box, compare, has_input_normalisation, optimizer_schedule, parity_batches, recipe_hint,
                      robustrain_run, trainer_generator, uniform)
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 4, 5, 16
# the 200-epoch milestones 100 and 150 scaled to 4 epochs (the recipe's milestones are epochs)
SHRINK = {"model.kwargs": {"width": 4}, "schedule.milestones": [2, 3]}


# the official script's settings (train_cifar.py defaults), checked on the unshrunk recipe
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
}


def rice_piecewise(lr_max, epochs):
    def lr_schedule(t):
        if t / epochs < 0.5:
            return lr_max
        elif t / epochs < 0.75:
            return lr_max / 10.
        return lr_max / 100.
    return lr_schedule


def attack_pgd(model, x, y, eps, alpha, iters, gen, score_forward=True):
    """``attack_pgd`` of train_cifar.py for restarts = 1, L∞, no early stop, no mixup (returns δ)."""
    delta = box(x, uniform(x, eps, gen)).requires_grad_(True)
    for _ in range(iters):
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        d = torch.clamp(delta.detach() + alpha * grad.sign(), -eps, eps)
        delta = box(x, d).requires_grad_(True)
    if score_forward:
        with torch.no_grad():  # the restart-scoring forward (its loss is >= 0 = max_loss, so δ is kept)
            F.cross_entropy(model(x + delta), y, reduction="none")
    return delta.detach()


def official_loop(model, batches, *, epochs, lr_max, eps, alpha, iters, seed, extra_forwards=True):
    """``extra_forwards=False``: without the restart-scoring and the post-step clean forwards (the aligned run)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=0.9, weight_decay=5e-4)
    lr_schedule = rice_piecewise(lr_max, epochs)
    gen = trainer_generator(seed)
    n = len(batches)
    schedule = []
    for epoch in range(epochs):
        model.train()
        for i, (x, y) in enumerate(batches):
            opt.param_groups[0].update(lr=lr_schedule(epoch + (i + 1) / n))
            delta = attack_pgd(model, x, y, eps, alpha, iters, gen, extra_forwards)
            loss = F.cross_entropy(model(torch.clamp(x + delta, 0, 1)), y)
            schedule.append(optimizer_schedule(opt))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if extra_forwards:
                with torch.no_grad():  # the clean forward for the logged training accuracy (train mode)
                    model(x)
    return schedule


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)
    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK)
    cfg = ours.cfg
    kw = dict(epochs=EPOCHS, lr_max=cfg.optim.lr, eps=cfg.threat.eps, alpha=cfg.attack["step"],
              iters=cfg.attack["steps"], seed=cfg.seed)
    model, aligned = copy.deepcopy(ours.initial_model), copy.deepcopy(ours.initial_model)
    schedule = official_loop(model, batches, **kw)
    official_loop(aligned, batches, extra_forwards=False, **kw)
    hints = [
        recipe_hint(has_input_normalisation(ours.trainer.model), "the official script normalises the inputs"),
        recipe_hint(cfg.attack.get("update_bn_stats"), "the official attack forwards move the BatchNorm statistics: "
                    "attack.update_bn_stats: true"),
        recipe_hint(cfg.attack.get("keep_best") is False and cfg.attack.get("restarts") == 1,
                    "official training PGD: last iterate, one restart"),
    ]
    return compare(CASE, ours, model, constants=recipe_constants(CASE.recipe, OFFICIAL),
                   ref_schedule=schedule, hints=hints, buffers_by_design=BUFFERS,
                   aligned_model=aligned)


BUFFERS = ("the official loop runs two more train-mode forwards per batch (the restart-scoring forward at x + δ and a "
           "clean forward after the step, for logging) that move only the BatchNorm running statistics")

CASE = Case(
    recipe="cifar10_pgd_at",
    official="locuslab/robust_overfitting train_cifar.py@c47a25c",
    behaviour="code (piecewise lr at t = epoch + (i+1)/n, attack forwards update BN statistics)",
    by_design="BN running statistics: " + BUFFERS + "; start drawn from robustrain's generator; normalisation "
              "inside the model",
    run=run,
)
