"""FGSM-RS on CIFAR-10 (configs/cifar10_fgsm_rs.yaml) against locuslab/fast_adversarial CIFAR10/train_fgsm.py@54f7287.

The official loop, as read there: SGD(lr_max, momentum 0.9, weight decay 5e-4) driven by
``torch.optim.lr_scheduler.CyclicLR(base 0, max lr_max, up = down = total/2)`` with its default momentum cycling,
stepped after every batch; per batch, in train mode: δ ~ U[−ε, ε] clipped to the box, one forward/backward at
x + δ (its BatchNorm running statistics update), δ ← clip_ε(δ + α·sign ∇) then the box clip, and the training
forward at x + δ with mean cross-entropy.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .harness import (Case, cyclic_sgd, box, compare, has_input_normalisation, optimizer_schedule, parity_batches, recipe_hint,
                      require,
                      robustrain_run, trainer_generator, uniform)
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 4, 5, 32
SHRINK = {"model.kwargs": {"width": 4}}


# the official script's settings (train_fgsm.py defaults), checked on the unshrunk recipe
OFFICIAL = {
    'train.epochs': 15,
    'data.batch_size': 128,
    'optim.name': 'sgd',
    'optim.lr': 0.2,
    'optim.momentum': 0.9,
    'optim.weight_decay': 0.0005,
    'threat.eps': 8/255,
    'attack.step': 10/255,
    'schedule.name': 'cyclic',
    'schedule.peak': 0.5,
    'train.eps_warmup_epochs': 0,
}


def official_loop(model, batches, *, epochs, lr_max, momentum, weight_decay, eps, alpha, seed):
    """Wong et al.'s train_fgsm.py training loop (fp32; normalisation inside the model)."""
    total = epochs * len(batches)
    opt, sched = cyclic_sgd(model, total, lr_max, momentum, weight_decay)
    gen = trainer_generator(seed)
    schedule = []
    model.train()
    for _ in range(epochs):
        for x, y in batches:
            delta = uniform(x, eps, gen)
            delta = box(x, delta).requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = torch.clamp(delta.detach() + alpha * grad.sign(), -eps, eps)
            delta = box(x, delta)
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
    model = copy.deepcopy(ours.initial_model)
    schedule = official_loop(model, batches, epochs=EPOCHS, lr_max=cfg.optim.lr, momentum=cfg.optim.momentum,
                             weight_decay=cfg.optim.weight_decay, eps=cfg.threat.eps, alpha=cfg.attack["step"],
                             seed=cfg.seed)
    hints = [recipe_hint(cfg.attack.get("update_bn_stats"), "the official attack forward updates the BatchNorm running "
                         "statistics: the recipe needs attack.update_bn_stats: true")]
    return compare(CASE, ours, model, constants=recipe_constants(CASE.recipe, OFFICIAL),
                   ref_schedule=schedule, hints=hints)


CASE = Case(
    recipe="cifar10_fgsm_rs",
    official="locuslab/fast_adversarial CIFAR10/train_fgsm.py@54f7287",
    behaviour="code (CyclicLR with momentum cycling; attack forward updates BN statistics)",
    by_design="fp32 instead of apex O2; normalisation inside the model with ε, α in pixel units (the script "
              "normalises the data and divides ε, α by σ); random start drawn from robustrain's generator; "
              "no --early-stop",
    run=run,
)
