"""PGD-AT + AWP on CIFAR-10 (configs/cifar10_pgd_at_awp.yaml) against csdongxian/AWP AT_AWP/train_cifar10.py +
utils_awp.py@a7acf5d.

The official loop, as read there (``--awp-gamma 0.01 --awp-warmup 0``, piecewise lr): Rice's loop (see
case_pgd_at.py: lr at t = epoch + (i+1)/n, ``attack_pgd`` with its restart-scoring forward, training forward at
clamp(x + δ, 0, 1), a clean train-mode forward after the update) plus, between the attack and the training forward,
``model.train()`` and ``AdvWeightPerturb.calc_awp``: a proxy loaded with the model's state, in train mode, takes one
SGD(lr 0.01) step on −CE(proxy(x_adv)); for every state-dict tensor with 'weight' in its name and more than one
dimension (conv and linear weights) diff = w_proxy − w, scaled to ‖w‖/(‖diff‖ + 1e-20)·diff; the model is perturbed
by γ·diff, trained, and γ·diff subtracted after ``opt.step()``. Unlike Rice's script there is no ``model.train()``
at the start of an epoch: the end-of-epoch test leaves the model in eval mode, so the *first batch of every epoch
after the first* is attacked in eval mode (BatchNorm on running statistics, which that attack does not update).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .case_pgd_at import attack_pgd, rice_piecewise
from .harness import (Case, compare_lockstep, optimizer_schedule, parity_batches, recipe_hint, robustrain_run,
                      trainer_generator)
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 4, 5, 16
SHRINK = {"model.kwargs": {"width": 4}, "schedule.milestones": [2, 3]}
EPS20 = 1e-20


# the official script's settings (train_cifar10.py defaults), checked on the unshrunk recipe
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
    'weight_perturbation.warmup_epochs': 0,
}


def awp_direction(model, proxy, x_adv, y, exact=False):
    """calc_awp: one proxy SGD(0.01) step on −CE, then the per-layer scaled weight difference. ``exact``: the
    difference taken as the step itself, −0.01·∇(−CE), instead of fl(w_proxy − w) (which loses about
    log10(|w| / |0.01·g|) digits to cancellation)."""
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    proxy_opt = torch.optim.SGD(proxy.parameters(), lr=0.01)
    loss = -F.cross_entropy(proxy(x_adv), y)
    proxy_opt.zero_grad()
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in proxy.named_parameters()}
    proxy_opt.step()
    diff = {}
    new_state = proxy.state_dict()
    for k, old_w in model.state_dict().items():
        if old_w.dim() <= 1 or "weight" not in k:
            continue
        d = -0.01 * grads[k] if exact else new_state[k] - old_w
        diff[k] = old_w.norm() / (d.norm() + EPS20) * d
    return diff


def add_into_weights(model, diff, coeff):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in diff:
                p.add_(coeff * diff[name])


def official_loop(model, batches, *, epochs, lr_max, eps, alpha, iters, gamma, seed, extra_forwards=True):
    """``extra_forwards=False``: the aligned run, without the restart-scoring and post-step clean forwards (they only
    move BatchNorm statistics). Both use the exact AWP direction (see :func:`awp_direction`; by design)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=0.9, weight_decay=5e-4)
    proxy = copy.deepcopy(model)
    lr_schedule = rice_piecewise(lr_max, epochs)
    gen = trainer_generator(seed)
    n = len(batches)
    schedule = []
    model.train()  # a new module is in train mode
    for epoch in range(epochs):
        for i, (x, y) in enumerate(batches):
            opt.param_groups[0].update(lr=lr_schedule(epoch + (i + 1) / n))
            delta = attack_pgd(model, x, y, eps, alpha, iters, gen, score_forward=extra_forwards)
            x_adv = torch.clamp(x + delta, 0, 1)
            model.train()
            diff = awp_direction(model, proxy, x_adv, y, exact=True)
            add_into_weights(model, diff, gamma)
            loss = F.cross_entropy(model(x_adv), y)
            schedule.append(optimizer_schedule(opt))
            opt.zero_grad()
            loss.backward()
            opt.step()
            add_into_weights(model, diff, -gamma)
            if extra_forwards:
                with torch.no_grad():
                    model(x)  # the clean forward for the logged training accuracy
            yield opt
        model.eval()  # the end-of-epoch test; the next epoch starts without model.train()
    return schedule


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)

    def references(new_model, cfg):
        kw = dict(epochs=EPOCHS, lr_max=cfg.optim.lr, eps=cfg.threat.eps, alpha=cfg.attack["step"],
                  iters=cfg.attack["steps"], gamma=cfg.weight_perturbation["gamma"], seed=cfg.seed)
        official, aligned = new_model(), new_model()
        return {"official": (official, official_loop(official, batches, **kw)),
                "aligned": (aligned, official_loop(aligned, batches, extra_forwards=False, **kw))}

    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK, lockstep=references)
    hints = [recipe_hint(ours.cfg.attack.get("first_batch_bn_mode") == "eval", EVAL_FIRST_BATCH)]
    return compare_lockstep(CASE, ours, constants=recipe_constants(CASE.recipe, OFFICIAL),
                   hints=hints, buffers_by_design=BUFFERS)


EVAL_FIRST_BATCH = ("the official loop attacks the first batch of every epoch after the first in eval mode (the "
                    "end-of-epoch test leaves the model in eval mode; model.train() comes after the attack): the "
                    "recipe needs attack.first_batch_bn_mode: eval")
BUFFERS = ("the official loop runs two more train-mode forwards per batch (restart scoring, post-step clean "
           "forward) that move only the BatchNorm running statistics")

CASE = Case(
    recipe="cifar10_pgd_at_awp",
    official="csdongxian/AWP AT_AWP/train_cifar10.py + utils_awp.py@a7acf5d",
    behaviour="code (Rice piecewise lr at the batch end, AWP γ 0.01 per layer on conv/linear weights)",
    by_design="BN running statistics: " + BUFFERS + "; AWP direction: the proxy's SGD(0.01) step taken exactly, "
              "0.01·∇CE (the official fl(w_proxy − w) loses digits to cancellation: 5e-5 relative per step here); "
              "normalisation inside the model; lockstep comparison",
    run=run,
)
