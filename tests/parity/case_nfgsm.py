"""N-FGSM on CIFAR-10 (configs/cifar10_nfgsm.yaml) against pdejorge/N-FGSM train.py@0a9e4f0.

The official loop, as read there: SGD(lr_max 0.2, momentum 0.9, weight decay 5e-4) with
``torch.optim.lr_scheduler.CyclicLR(base 0, max lr_max, up = down = total/2)`` (default momentum cycling), stepped
after every batch; per batch, model in train mode: η ~ U[−kε, kε] (k = ``--unif`` 2) clipped to the box, one
forward at x + η (BatchNorm statistics update) and ``autograd.grad`` for ∇η, δ = η + α·sign ∇ (α = ε) clipped to
the box only (``--clip`` −1: no projection onto the ε-ball), then the training forward at x + δ, mean CE.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .harness import (Case, cyclic_sgd, box, compare, has_input_normalisation, optimizer_schedule, parity_batches, recipe_hint,
                      require, robustrain_run, trainer_generator, uniform)
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 4, 5, 32
SHRINK = {"model.kwargs": {"width": 4}}
UNIF = 2.0  # train.py --unif default


# the official script's settings (train.py defaults), checked on the unshrunk recipe
OFFICIAL = {
    'train.epochs': 30,
    'data.batch_size': 128,
    'optim.name': 'sgd',
    'optim.lr': 0.2,
    'optim.momentum': 0.9,
    'optim.weight_decay': 0.0005,
    'threat.eps': 8/255,
    'attack.step': 8/255,
    'attack.init_scale': 2.0,
    'schedule.name': 'cyclic',
    'schedule.peak': 0.5,
}


def official_loop(model, batches, *, epochs, lr_max, momentum, weight_decay, eps, alpha, seed):
    total = epochs * len(batches)
    opt, sched = cyclic_sgd(model, total, lr_max, momentum, weight_decay)
    gen = trainer_generator(seed)
    schedule = []
    model.train()
    for _ in range(epochs):
        for x, y in batches:
            eta = box(x, uniform(x, UNIF * eps, gen)).requires_grad_(True)
            loss = F.cross_entropy(model(x + eta), y)
            (grad,) = torch.autograd.grad(loss, eta)
            delta = box(x, eta.detach() + alpha * grad.sign())
            loss = F.cross_entropy(model(x + delta), y)
            schedule.append(optimizer_schedule(opt))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return schedule


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)
    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK)
    cfg = ours.cfg
    require(has_input_normalisation(ours.trainer.model), "the official script normalises the inputs (CIFAR mean/std)")
    require(cfg.attack.get("init_scale", 2.0) == UNIF and cfg.attack.get("project") is False,
            "the official N-FGSM draws U[-2ε, 2ε] and does not project")
    model = copy.deepcopy(ours.initial_model)
    schedule = official_loop(model, batches, epochs=EPOCHS, lr_max=cfg.optim.lr, momentum=cfg.optim.momentum,
                             weight_decay=cfg.optim.weight_decay, eps=cfg.threat.eps, alpha=cfg.attack["step"],
                             seed=cfg.seed)
    hints = [recipe_hint(cfg.attack.get("update_bn_stats"), "the official attack forward updates the BatchNorm running "
                         "statistics: the recipe needs attack.update_bn_stats: true")]
    return compare(CASE, ours, model, constants=recipe_constants(CASE.recipe, OFFICIAL),
                   ref_schedule=schedule, hints=hints)


CASE = Case(
    recipe="cifar10_nfgsm",
    official="pdejorge/N-FGSM train.py@0a9e4f0",
    behaviour="code (CyclicLR with momentum cycling; attack forward updates BN statistics)",
    by_design="normalisation inside the model with ε, α in pixel units (the script normalises the data and divides "
              "by σ); noise drawn from robustrain's generator; no --validation-early-stop",
    run=run,
)
