"""What the FastAT_Benchmark parity cases share (case_nfgsm_wa.py, case_pgd_at_wa.py): the benchmark's training loop
around a method's attack, with its weight average, and the comparison of robustrain's ``ema`` average with it.

The loop, as read in fzjcdt/FastAT_Benchmark main.py + fast_at/n_fgsm.py / fast_at/pgd_at.py@b99c0de: the network on
raw [0, 1] inputs, SGD(lr 0.1, momentum 0.9, weight decay 5e-4) driven by ``OneCycleLR(opt, max_lr=lr,
total_steps=total_epoch)`` (torch's defaults: pct_start 0.3, cosine annealing, momentum cycled 0.95 → 0.85 → 0.95)
stepped once per *epoch*; ``criterion = CrossEntropyLoss(label_smoothing=0.4)``; before training
``wa_model = deepcopy(model)`` and ``exp_avg = model.state_dict()`` (a dictionary of the live tensors, not a copy).
Per batch, ``model.train()`` for the epoch: the method's attack, ``opt.zero_grad()``, the training forward at x_adv,
``criterion``, backward, ``opt.step()``; then over the whole state dict (parameters, BatchNorm running statistics
*and* ``num_batches_tracked``) ``exp_avg[k] = (1 − τ)·value + τ·exp_avg[k]``, τ = 0.9995. Because ``exp_avg`` still
holds the live tensors at the first update, that update gives (1 − τ)·θ₁ + τ·θ₁ = θ₁ (robustrain: ``warmup_steps:
1`` copies θ₁); every later update is a fresh tensor. After each epoch ``wa_model.load_state_dict(exp_avg)``;
``last.pth`` is the average.

The shrunk runs lower τ to 0.8 (the recipe's 0.9995 is checked on the unshrunk recipe): with τ = 0.9995, 20 updates
would leave the average within 1 % of θ₁'s distance from θ_T, and a wrong decay or a missed update would hide below
the tolerance.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .harness import (CaseResult, compare, has_input_normalisation, max_rel_diff, optimizer_schedule, parity_batches,
                      recipe_constants, recipe_hint, require, robustrain_run, trainer_generator)

TAU = 0.8
EMA = {"name": "ema", "decay": TAU, "warmup_steps": 1, "buffers": "average"}

# configs/cifar10/common.yaml + the method yaml and main.py's optimiser / scheduler, checked on the unshrunk recipe
OFFICIAL = {
    'train.epochs': 100,
    'data.batch_size': 128,
    'data.val_size': 1000,
    'optim.name': 'sgd',
    'optim.lr': 0.1,
    'optim.momentum': 0.9,
    'optim.weight_decay': 0.0005,
    'threat.eps': 8 / 255,
    'train.label_smoothing': 0.4,
    'schedule.name': 'onecycle',
    'schedule.at': 'epoch',
    'schedule.peak': 0.3,
    'schedule.base_momentum': 0.85,
    'schedule.max_momentum': 0.95,
    'procedures': [{'name': 'ema', 'decay': 0.9995, 'warmup_steps': 1, 'buffers': 'average'}],
}

BY_DESIGN = ("weights and BN buffers columns: the worse of the training model and the average (the official exp_avg "
             "after the last step, whose update rounds differently: (1 − τ)·θ + τ·θ̄ against τ·θ̄ + (1 − τ)·θ); the "
             "average's num_batches_tracked is copied (the official averages the counter as a float and truncates it "
             "on loading; it is not compared); τ 0.8 instead of 0.9995 for the 20-step case; PreActResNet-18 width 4 "
             "instead of ResNet-18; no best.pth choice between model and average (robustrain: use_for)")

Attack = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def official_loop(model, batches, attack: Attack, *, epochs, lr, momentum, weight_decay, tau, smoothing):
    """The benchmark's loop around ``attack(model, x, y) -> x_adv``; returns (schedule, exp_avg): the (lr, momentum)
    of every step and the official average after the last step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs)
    exp_avg = model.state_dict()  # the live tensors, as the official code keeps them until the first update
    schedule = []
    for _ in range(epochs):
        model.train()
        for x, y in batches:
            x_adv = attack(model, x, y)
            opt.zero_grad()
            loss = F.cross_entropy(model(x_adv), y, label_smoothing=smoothing)
            schedule.append(optimizer_schedule(opt))
            loss.backward()
            opt.step()
            for key, value in model.state_dict().items():
                exp_avg[key] = (1 - tau) * value + tau * exp_avg[key]
        sched.step()
    return schedule, exp_avg


def run_case(case, *, epochs: int, n_batches: int, batch: int, attack: Callable[[Any, torch.Generator], Attack],
             hints: Callable[[Any], list[str]], official: dict[str, Any]) -> CaseResult:
    """A FastAT_Benchmark case: the shrunk recipe (width-4 PreActResNet-18, :data:`EMA`) through robustrain, the
    official loop around ``attack(cfg, generator)`` from the same initial weights (its draws from
    ``trainer_generator``), and :func:`compare_with_average`; ``hints(cfg)`` are the method's recipe hints."""
    import copy

    batches = parity_batches("cifar10", n_batches, batch, seed=0)
    ours = robustrain_run(case.recipe, batches, epochs=epochs,
                          overrides={"model.kwargs": {"width": 4}, "procedures": [EMA]})
    cfg = ours.cfg
    require(not has_input_normalisation(ours.trainer.model), "the benchmark feeds raw [0,1] inputs (ToTensor only)")
    model = copy.deepcopy(ours.initial_model)
    schedule, exp_avg = official_loop(model, batches, attack(cfg, trainer_generator(cfg.seed)), epochs=epochs,
                                      lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                      weight_decay=cfg.optim.weight_decay, tau=cfg.procedures[0]["decay"],
                                      smoothing=cfg.train.label_smoothing)
    return compare_with_average(case, ours, model, schedule, exp_avg, hints=[*hints(cfg), *ema_hints(cfg)],
                                constants=recipe_constants(case.recipe, official))


def ema_hints(cfg) -> list[str]:
    proc = cfg.procedures[0] if cfg.procedures else {}
    return [recipe_hint(proc.get("warmup_steps") == 1, "the official first update copies θ₁ (exp_avg aliases the "
                        "live weights): ema.warmup_steps: 1"),
            recipe_hint(proc.get("buffers", "average") == "average", "the official average runs over the whole "
                        "state dict, BatchNorm statistics included: ema.buffers: average")]


def compare_with_average(case, ours, model, schedule: Sequence, exp_avg: dict[str, Any], *, hints: Sequence[str],
                         constants: Sequence[str]) -> CaseResult:
    """:func:`~.harness.compare` of the training model, then the ``ema`` procedure's average against ``exp_avg``
    (parameters, and the floating BatchNorm buffers); the row's values are the worse of the two."""
    ema = [p for p in ours.trainer.procedures if getattr(p, "name", "") == "ema"]
    require(len(ema) == 1 and ema[0].averaged is not None, "the recipe needs one ema procedure")
    averaged = {k: v.detach().clone() for k, v in ema[0].averaged.state_dict().items()}
    params = [k for k, _ in model.named_parameters()]
    stats = [k for k, v in exp_avg.items() if k not in set(params) and v.is_floating_point()
             and not k.endswith("num_batches_tracked")]
    avg_w, avg_wk = max_rel_diff(averaged, exp_avg, params)
    avg_b, avg_bk = max_rel_diff(averaged, exp_avg, stats)
    # how far the average is from the training weights: a missed or mis-weighted update would show at this scale
    spread, _ = max_rel_diff(averaged, ours.final_state, params)
    result = compare(case, ours, model, constants=constants, ref_schedule=schedule, hints=hints,
                     extra={"averaged_weights": avg_w, "averaged_buffers": avg_b, "average_vs_training": spread})
    result.extra.update(training_weights=result.weights, training_buffers=result.buffers)
    if avg_w > result.weights:
        result.weights, result.weights_key = avg_w, f"average: {avg_wk}"
    if avg_b > result.buffers:
        result.buffers, result.buffers_key = avg_b, f"average: {avg_bk}"
    assert spread > 1e-2, f"the average is within {spread:.3g} of the training weights: the case does not test it"
    return result
