"""FGSM-RS on MNIST (configs/mnist_fgsm_rs.yaml) against locuslab/fast_adversarial MNIST/train_mnist.py@54f7287.

The official loop, as read there (``--attack fgsm``, the defaults): ``mnist_net`` on raw [0, 1] inputs, Adam(lr_max
5e-3, default betas, no weight decay), lr set before every batch to ``np.interp(epoch + (i+1)/n, [0, E·2//5, E],
[0, lr_max, 0])`` (E = 10 epochs); per batch: δ ~ U[−ε, ε] *not* clipped to the box, gradient of the mean CE at
x + δ, δ ← clamp(δ + α·sign ∇, −ε, ε) (α = 0.375, ε = 0.3) then clipped to the box, and the training forward at
clamp(x + δ, 0, 1). No ε warm-up.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .harness import (Case, box, compare, has_input_normalisation, optimizer_schedule, parity_batches, recipe_hint,
                      robustrain_run, trainer_generator, uniform)
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 5, 4, 32  # E·2//5 = 2: the peak at 2/5 of training, as 10·2//5 = 4 of 10


# the official script's settings (train_mnist.py defaults (--attack fgsm)), checked on the unshrunk recipe
OFFICIAL = {
    'train.epochs': 10,
    'data.batch_size': 100,
    'optim.name': 'adam',
    'optim.lr': 0.005,
    'optim.betas': [0.9, 0.999],
    'optim.weight_decay': 0.0,
    'threat.eps': 0.3,
    'attack.step': 0.375,
    'schedule.name': 'interp',
    'schedule.peak': 0.4,
    'train.eps_warmup_epochs': 0,
}


def official_loop(model, batches, *, epochs, lr_max, eps, alpha, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr_max)
    n = len(batches)

    def lr_schedule(t):
        return np.interp([t], [0, epochs * 2 // 5, epochs], [0, lr_max, 0])[0]

    gen = trainer_generator(seed)
    schedule = []
    model.train()
    for epoch in range(epochs):
        for i, (x, y) in enumerate(batches):
            opt.param_groups[0].update(lr=lr_schedule(epoch + (i + 1) / n))
            delta = uniform(x, eps, gen).requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = torch.clamp(delta.detach() + alpha * grad.sign(), -eps, eps)
            delta = box(x, delta)
            loss = F.cross_entropy(model(torch.clamp(x + delta, 0, 1)), y)
            schedule.append(optimizer_schedule(opt))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return schedule


def run():
    batches = parity_batches("mnist", N_BATCHES, BATCH, seed=0)
    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, dataset="mnist")
    cfg = ours.cfg
    model = copy.deepcopy(ours.initial_model)
    schedule = official_loop(model, batches, epochs=EPOCHS, lr_max=5e-3, eps=0.3, alpha=0.375, seed=cfg.seed)
    hints = [
        recipe_hint(not has_input_normalisation(ours.trainer.model), "the official MNIST model gets raw [0,1] inputs: "
                    "the recipe needs model.normalise: false"),
        recipe_hint(cfg.optim.name == "adam" and cfg.optim.lr == 5e-3, "the official optimiser is Adam, lr_max 5e-3"),
        recipe_hint(cfg.schedule.name == "interp" and cfg.schedule.peak == 0.4,
                    "the official lr is np.interp at epoch + (i+1)/n with the peak at E·2//5: schedule interp, "
                    "peak 0.4"),
        recipe_hint(cfg.train.eps_warmup_epochs == 0, "the official script has no ε warm-up"),
        recipe_hint(cfg.attack.get("clip_init") is False, "the official gradient is taken at the unclipped random "
                    "start: attack.clip_init: false"),
        recipe_hint(cfg.threat.eps == 0.3 and cfg.attack.get("step") == 0.375, "official ε 0.3, α 0.375"),
    ]
    return compare(CASE, ours, model, constants=recipe_constants(CASE.recipe, OFFICIAL),
                   ref_schedule=schedule, hints=hints)


CASE = Case(
    recipe="mnist_fgsm_rs",
    official="locuslab/fast_adversarial MNIST/train_mnist.py@54f7287",
    behaviour="code (Adam, np.interp lr at batch end, unclipped random start, raw inputs)",
    by_design="noise drawn from robustrain's generator; box clip with robustrain's rounding",
    run=run,
)
