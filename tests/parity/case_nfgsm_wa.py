"""N-FGSM + weight averaging on CIFAR-10 (configs/cifar10_nfgsm_wa.yaml, the ``ema`` procedure) against
fzjcdt/FastAT_Benchmark fast_at/n_fgsm.py + main.py + configs/cifar10/{common,n_fgsm}.yaml@b99c0de.

The official loop, as read there: the network on raw [0, 1] inputs, SGD(lr 0.1, momentum 0.9, weight decay 5e-4)
driven by ``OneCycleLR(opt, max_lr=lr, total_steps=total_epoch)`` (torch's defaults: pct_start 0.3, cosine
annealing, momentum cycled 0.95 → 0.85 → 0.95) stepped once per *epoch*; ``criterion = CrossEntropyLoss(
label_smoothing=0.4)`` for the attack *and* the training loss; before training ``wa_model = deepcopy(model)`` and
``exp_avg = model.state_dict()`` (a dictionary of the live tensors, not a copy). Per batch, model in train mode:
x′ = clamp(x + U[−2ε, 2ε], 0, 1), one forward (BatchNorm statistics update) and ``loss.backward()`` for ∇x′,
x_adv = clamp(x′ + ε·sign ∇, 0, 1) (no projection onto the ε-ball), ``opt.zero_grad()``, the training forward at
x_adv, backward, ``opt.step()``; then over the whole state dict (parameters, BatchNorm running statistics *and*
``num_batches_tracked``) ``exp_avg[k] = (1 − τ)·value + τ·exp_avg[k]``, τ = 0.9995. Because ``exp_avg`` still holds
the live tensors at the first update, that update gives (1 − τ)·θ₁ + τ·θ₁ = θ₁ (robustrain: ``warmup_steps: 1``
copies θ₁); every later update is a fresh tensor. After each epoch ``wa_model.load_state_dict(exp_avg)``; ``last.pth``
is the average.

What this case checks: the training weights (the N-FGSM loop with label smoothing and the per-epoch OneCycleLR) and
the averaged weights and BatchNorm statistics of robustrain's ``ema`` procedure against ``exp_avg`` after the last
step. The decay is lowered to 0.8 in the shrunk run (the recipe's τ = 0.9995 is checked on the unshrunk recipe):
with τ = 0.9995, 20 updates would leave the average within 1 % of θ₁'s distance from θ_T and a wrong decay or a
missed update would hide below the tolerance.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .harness import (Case, box, compare, has_input_normalisation, max_rel_diff, optimizer_schedule, parity_batches,
                      recipe_constants, recipe_hint, require, robustrain_run, trainer_generator, uniform)

EPOCHS, N_BATCHES, BATCH = 4, 5, 32
TAU = 0.8  # shrunk from 0.9995 so that 20 updates move the average well away from θ₁ (see the module docstring)
SHRINK = {"model.kwargs": {"width": 4},
          "procedures": [{"name": "ema", "decay": TAU, "warmup_steps": 1, "buffers": "average"}]}
UNIF = 2.0  # U[-2ε, 2ε]

# configs/cifar10/common.yaml + n_fgsm.yaml and main.py's optimiser / scheduler, checked on the unshrunk recipe
OFFICIAL = {
    'train.epochs': 100,
    'data.batch_size': 128,
    'data.val_size': 1000,
    'optim.name': 'sgd',
    'optim.lr': 0.1,
    'optim.momentum': 0.9,
    'optim.weight_decay': 0.0005,
    'threat.eps': 8 / 255,
    'attack.step': 8 / 255,
    'attack.init_scale': 2.0,
    'attack.project': False,
    'train.label_smoothing': 0.4,
    'attack.label_smoothing': 0.4,  # the attack's gradient is of the same criterion
    'schedule.name': 'onecycle',
    'schedule.at': 'epoch',
    'schedule.peak': 0.3,
    'schedule.base_momentum': 0.85,
    'schedule.max_momentum': 0.95,
    'procedures': [{'name': 'ema', 'decay': 0.9995, 'warmup_steps': 1, 'buffers': 'average'}],
}


def official_loop(model, batches, *, epochs, lr, momentum, weight_decay, eps, tau, smoothing, seed):
    """Returns (schedule, exp_avg): the (lr, momentum) of every step and the official average after the last step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs)
    gen = trainer_generator(seed)
    exp_avg = model.state_dict()  # the live tensors, as the official code keeps them until the first update
    schedule = []
    for _ in range(epochs):
        model.train()
        for x, y in batches:
            eta = box(x, uniform(x, UNIF * eps, gen)).requires_grad_(True)
            loss = F.cross_entropy(model(x + eta), y, label_smoothing=smoothing)
            (grad,) = torch.autograd.grad(loss, eta)
            delta = box(x, eta.detach() + eps * grad.sign())
            opt.zero_grad()
            loss = F.cross_entropy(model(x + delta), y, label_smoothing=smoothing)
            schedule.append(optimizer_schedule(opt))
            loss.backward()
            opt.step()
            for key, value in model.state_dict().items():
                exp_avg[key] = (1 - tau) * value + tau * exp_avg[key]
        sched.step()
    return schedule, exp_avg


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)
    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK)
    cfg = ours.cfg
    require(not has_input_normalisation(ours.trainer.model), "the benchmark feeds raw [0,1] inputs (ToTensor only)")
    require(cfg.attack.get("init_scale") == UNIF and cfg.attack.get("project") is False,
            "the official N-FGSM draws U[-2ε, 2ε] and does not project")
    ema = [p for p in ours.trainer.procedures if getattr(p, "name", "") == "ema"]
    require(len(ema) == 1 and ema[0].averaged is not None, "the recipe needs one ema procedure")
    proc = cfg.procedures[0]
    model = copy.deepcopy(ours.initial_model)
    schedule, exp_avg = official_loop(
        model, batches, epochs=EPOCHS, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay, eps=cfg.threat.eps, tau=proc["decay"],
        smoothing=cfg.train.label_smoothing, seed=cfg.seed)
    averaged = {k: v.detach().clone() for k, v in ema[0].averaged.state_dict().items()}
    params = [k for k, _ in model.named_parameters()]
    stats = [k for k, v in exp_avg.items() if k not in set(params) and v.is_floating_point()
             and not k.endswith("num_batches_tracked")]
    avg_w, avg_wk = max_rel_diff(averaged, exp_avg, params)
    avg_b, avg_bk = max_rel_diff(averaged, exp_avg, stats)
    # how far the average is from the training weights: a missed or mis-weighted update would show at this scale
    spread, _ = max_rel_diff(averaged, ours.final_state, params)
    hints = [recipe_hint(cfg.attack.get("label_smoothing", 0.0) == cfg.train.label_smoothing, "the official attack "
                         "ascends the training criterion (CE with label smoothing 0.4): attack.label_smoothing: 0.4"),
             recipe_hint(cfg.attack.get("update_bn_stats"), "the official attack forward updates the BatchNorm running "
                         "statistics: the recipe needs attack.update_bn_stats: true"),
             recipe_hint(proc.get("warmup_steps") == 1, "the official first update copies θ₁ (exp_avg aliases the "
                         "live weights): ema.warmup_steps: 1"),
             recipe_hint(proc.get("buffers", "average") == "average", "the official average runs over the whole "
                         "state dict, BatchNorm statistics included: ema.buffers: average")]
    result = compare(CASE, ours, model, constants=recipe_constants(CASE.recipe, OFFICIAL), ref_schedule=schedule,
                     hints=hints, extra={"averaged_weights": avg_w, "averaged_buffers": avg_b,
                                         "average_vs_training": spread})
    # the row's values: the worse of the training and the averaged tensors
    result.extra.update(training_weights=result.weights, training_buffers=result.buffers)
    if avg_w > result.weights:
        result.weights, result.weights_key = avg_w, f"average: {avg_wk}"
    if avg_b > result.buffers:
        result.buffers, result.buffers_key = avg_b, f"average: {avg_bk}"
    assert spread > 1e-2, f"the average is within {spread:.3g} of the training weights: the case does not test it"
    return result


CASE = Case(
    recipe="cifar10_nfgsm_wa",
    official="fzjcdt/FastAT_Benchmark fast_at/n_fgsm.py + main.py@b99c0de",
    behaviour="code (EMA after every step over the whole state dict, BN statistics averaged, first update = θ₁, no "
              "decay warm-up; label-smoothed CE in the attack and the loss; OneCycleLR per epoch)",
    by_design="weights and BN buffers columns: the worse of the training model (bit-identical) and the average "
              "(the official exp_avg after the last step; its update rounds differently: (1 − τ)·θ + τ·θ̄ against "
              "τ·θ̄ + (1 − τ)·θ); the average's num_batches_tracked is copied (the official averages the counter as a float and "
              "truncates it on loading; it is not compared); τ 0.8 instead of 0.9995 for the 20-step case; "
              "PreActResNet-18 width 4 instead of ResNet-18; noise drawn from robustrain's generator; box clip with "
              "robustrain's rounding; no best.pth choice between model and average (robustrain: use_for)",
    run=run,
)
