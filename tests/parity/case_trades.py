"""TRADES on CIFAR-10 (configs/cifar10_trades.yaml) against yaodongyu/TRADES train_trades_cifar10.py +
trades.py@6e8e11b.

The official loop, as read there: the network on raw [0, 1] inputs, SGD(lr 0.1, momentum 0.9, weight decay 2e-4);
for epoch = 1..E (counted from 1) ``adjust_learning_rate``: lr·0.1 from epoch 75, lr·0.01 from 90, lr·0.001 from
100; ``model.train()`` then per batch ``trades_loss``: model.eval(); x′ = x + 0.001·N(0, I) (not clipped); 10 ×
(KLDivLoss(sum)(log_softmax f(x′), softmax f(x)), x′ ← x′ + 0.007·sign ∇, min/max onto [x − ε, x + ε], clamp to
[0, 1]); model.train(); loss = CE(f(x), y) + β·(1/B)·KL(sum)(log_softmax f(x′) ‖ softmax f(x)) with a *third*
train-mode forward f(x) for the KL target (the first one feeds the CE); step.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .harness import (Case, box, compare_lockstep, has_input_normalisation, optimizer_schedule, parity_batches,
                      recipe_hint,
                      robustrain_run, trainer_generator)
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 4, 5, 16
MILESTONES = (2, 3, 4)  # the script's 75, 90, 100 (counted from 1), scaled so that all three act within 4 epochs
SHRINK = {"model.name": "preact_resnet18", "model.kwargs": {"width": 4}, "schedule.milestones": list(MILESTONES)}


# the official script's settings (train_trades_cifar10.py defaults), checked on the unshrunk recipe
OFFICIAL = {
    'train.epochs': 76,
    'data.batch_size': 128,
    'optim.name': 'sgd',
    'optim.lr': 0.1,
    'optim.momentum': 0.9,
    'optim.weight_decay': 0.0002,
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
    """The script's adjust_learning_rate, its thresholds 75, 90, 100 replaced by ``milestones``."""
    new = lr
    if epoch >= milestones[0]:
        new = lr * 0.1
    if epoch >= milestones[1]:
        new = lr * 0.01
    if epoch >= milestones[2]:
        new = lr * 0.001
    for group in opt.param_groups:
        group["lr"] = new


def trades_loss(model, x_natural, y, optimizer, step_size, epsilon, perturb_steps, beta, gen, third_forward=True):
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    batch_size = len(x_natural)
    noise = torch.randn(x_natural.shape, generator=gen)  # the official torch.randn(...) from the shared generator
    delta = 0.001 * noise
    for _ in range(perturb_steps):
        x_adv = (x_natural + delta).requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        # official: x′ ← clamp(min(max(x′ + s·sign ∇, x − ε), x + ε), 0, 1); the same update kept as δ = x′ − x
        # (robustrain's rounding): near x the KL gradient is so small that its signs follow the last float bit
        delta = box(x_natural, torch.clamp(delta + step_size * torch.sign(grad.detach()), -epsilon, epsilon))
    x_adv = x_natural + delta
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    optimizer.zero_grad()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    target = model(x_natural) if third_forward else logits
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(target, dim=1))
    return loss_natural + beta * loss_robust


def official_loop(model, batches, *, epochs, lr, weight_decay, eps, step_size, steps, beta, seed, third_forward=True):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    gen = trainer_generator(seed)
    schedule = []
    for epoch in range(1, epochs + 1):
        adjust_learning_rate(opt, epoch, lr)
        model.train()
        for x, y in batches:
            opt.zero_grad()
            loss = trades_loss(model, x, y, opt, step_size, eps, steps, beta, gen, third_forward)
            schedule.append(optimizer_schedule(opt))
            loss.backward()
            opt.step()
            yield opt
    return schedule


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)

    def references(new_model, cfg):
        kw = dict(epochs=EPOCHS, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, eps=cfg.threat.eps,
                  step_size=cfg.attack["step"], steps=cfg.attack["steps"], beta=cfg.objective["beta"], seed=cfg.seed)
        official, aligned = new_model(), new_model()
        return {"official": (official, official_loop(official, batches, **kw)),
                "aligned": (aligned, official_loop(aligned, batches, third_forward=False, **kw))}

    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK, lockstep=references)
    cfg = ours.cfg
    hints = [
        recipe_hint(not has_input_normalisation(ours.trainer.model), "TRADES feeds raw [0,1] inputs: "
                    "model.normalise: false"),
        recipe_hint(cfg.schedule.get("count_from", 0) == 1 if isinstance(cfg.schedule, dict)
                    else getattr(cfg.schedule, "count_from", 0) == 1,
                    "adjust_learning_rate counts epochs from 1: schedule.count_from: 1"),
        recipe_hint(cfg.attack.get("clip_init") is False, "the official first gradient is at the unclipped "
                    "x + 0.001·N: the attack needs clip_init: false"),
        recipe_hint(cfg.attack.get("bn_mode") == "eval", "the official attack runs in eval mode"),
    ]
    return compare_lockstep(CASE, ours, constants=recipe_constants(CASE.recipe, OFFICIAL),
                   hints=hints, buffers_by_design=BUFFERS)


BUFFERS = ("the official loss runs a third train-mode forward f(x) for the KL target (the same values as the CE "
           "forward), which moves only the BatchNorm running statistics")

CASE = Case(
    recipe="cifar10_trades",
    official="yaodongyu/TRADES train_trades_cifar10.py + trades.py@6e8e11b",
    behaviour="code (epochs counted from 1, eval-mode KL attack from an unclipped Gaussian start)",
    # lockstep: the first signed step of the KL attack follows the last float bit of the weights (the KL gradient
    # near x is ~1e-6), so free-running runs that differ by rounding part after two steps
    by_design="BN running statistics: " + BUFFERS + "; PreActResNet-18 (width 4) instead of WRN-34-10; the "
              "Gaussian start drawn from robustrain's generator",
    run=run,
)
