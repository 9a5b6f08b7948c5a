"""ConvergeSmooth B-MEP, official-code behaviour, on CIFAR-10 (configs/cifar10_convergesmooth_mep.yaml) against
FAT-CS/ConvergeSmooth FGSM_MEP_CS.py@d94f6bc (the README's "python FGSM_MEP_CS.py": its argparse defaults, ε = α =
16/255, ``--momentum_decay 0.3``, ``--epochs_reset 40``, ``--factor 0.6``, ``--gamma 0.03``, ``--ratio 1``,
``--stride 1``, ``--w2 1``, no ``--initialize``; utils.py mean 0 / std 1, so raw [0,1] inputs).

The official loop, as read there: SGD(lr_max 0.1, momentum 0.9, weight decay 5e-4), per-iteration
``MultiStepLR(milestones = [T·d₁/d₃, T·d₂/d₃], γ 0.1)`` for ``decay_arr = [0, 100, 105, 110]``, the model in train
mode throughout (each forward updates the BatchNorm running statistics). At every epoch with ``epoch % epochs_reset
== 0`` the per-example prior is re-drawn, δ_p = clamp(α·sign(U[−ε, ε]), −ε, ε), and the momentum zeroed; prior,
momentum, images and labels are permuted together every epoch (a per-example buffer). Per batch (x augmented):

* forward at x + δ_p (not clipped to the box), label-smoothed CE (``LabelSmoothLoss``, 0.6 / 0.4/9), backward:
  g = ∇_δ; m ← g/‖g‖₁ + 0.3·m with ‖·‖₁ over the whole batch tensor;
* stored prior: clamp_box(clamp(δ_p + α·sign m, ±ε)); training perturbation: δ = clamp_box(clamp(δ_p + α·sign g, ±ε));
* forward at x + δ: loss = label-smoothed CE; the benign forward ``model(x)`` (clean): L_ben, label-smoothed;
* the ConvergeSmooth gate and constraint as in FGSM_RS_CS.py (case_convergesmooth.py); zero_grad, backward, step,
  scheduler step; prior and momentum written back; epoch end: u, β.

Shared draws: the parity batches are fixed and come in the same order every epoch, so the per-example buffer is
indexed by the example's position (the harness's loader numbers them); the prior's random signs are drawn as
robustrain draws them (one seed from the trainer's generator per (re-)initialisation, then ``randint`` signs), which is
where the official code's ``uniform_`` signs are injected. Rounding (harness.box): the label-smoothed CE of the
attack and training losses is torch's ``label_smoothing`` 4/9 and the L1 norm ``|g|.sum()``, each checked against
the official expression (``LabelSmoothLoss``, ``torch.norm(g, p=1)``) to 1e-5 at every step.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .case_convergesmooth import (_recipe_term, check_recipe, checked, constraint, gate_extra, gate_open,
                                  official_label_smooth_loss, smoothed_target_ce)
from .harness import (Case, compare, has_input_normalisation, optimizer_schedule, parity_batches, recipe_hint,
                      require, robustrain_run, trainer_generator)

N_BATCHES, BATCH = 3, 16
DECAY = [0, 5, 7, 8]
"""8 epochs of 3 batches (24 steps), lr ×0.1 at epochs 5 and 7, the gate open in epochs 2–3 (stride 1)."""
RESET = 3
"""``--epochs_reset`` shrunk from 40 to 3: the prior is re-drawn at epochs 0, 3 and 6, so the reset runs too."""
SHRINK = {"model.kwargs": {"width": 4}, "schedule.milestones": DECAY[1:-1], "attack.reset_every": RESET}


def prior_draw(shape, eps, alpha, gen):
    """clamp(α·sign(u), −ε, ε) with the signs drawn as robustrain draws them (see the module docstring)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
    signs = torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    return torch.clamp(alpha * (signs.float() * 2 - 1), -eps, eps)


def clamp_box(x, delta):
    """The script's ``clamp(δ, lower_limit − X, upper_limit − X)`` (limits 0 and 1): max(min(δ, 1 − x), −x)."""
    return torch.max(torch.min(delta, 1 - x), 0 - x)


def official_cs_mep_loop(model, batches, *, lr, momentum, weight_decay, eps, alpha, momentum_decay, epochs_reset,
                         factor, smoothing, gamma, ratio, w2, decay_arr, stride, seed):
    """FGSM_MEP_CS.py's training loop for ``decay_arr[-1]`` epochs. Returns (lr, momentum) per step and the gate's
    sign per step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    lr_steps = decay_arr[-1] * len(batches)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[lr_steps * d / decay_arr[-1] for d in decay_arr[1:-1]], gamma=0.1)
    gen = trainer_generator(seed)
    shape = (sum(len(y) for _, y in batches), *batches[0][0].shape[1:])
    pre_loss, beta_loss = torch.tensor(0.0), torch.tensor(0.0)
    schedule, signs = [], []
    model.train()
    for epoch in range(decay_arr[-1]):
        if epoch % epochs_reset == 0:
            all_delta = prior_draw(shape, eps, alpha, gen)
            all_momentum = torch.zeros(shape)
        train_normal_loss, train_n = 0.0, 0
        start = 0
        for x, y in batches:
            step = len(schedule)
            rows = slice(start, start + len(y))
            start += len(y)
            delta = all_delta[rows].clone().requires_grad_(True)
            mom = all_momentum[rows].clone()
            ori_output = model(x + delta)
            ori_loss = checked(F.cross_entropy(ori_output, y, label_smoothing=smoothing, reduction="none").mean(),
                               official_label_smooth_loss(ori_output, y, factor), "attack loss", step)
            (x_grad,) = torch.autograd.grad(ori_loss, delta)
            grad_norm = checked(x_grad.abs().sum(), torch.norm(x_grad, p=1), "L1 norm", step)
            mom = x_grad / grad_norm + mom * momentum_decay
            delta = delta.detach()
            next_delta = clamp_box(x, torch.clamp(delta + alpha * torch.sign(mom), -eps, eps))
            delta_adv = clamp_box(x, torch.clamp(delta + alpha * torch.sign(x_grad), -eps, eps))
            output = model(x + delta_adv)
            benign_output = model(x)
            loss_normal = checked(smoothed_target_ce(benign_output, y, factor),
                                  official_label_smooth_loss(benign_output, y, factor), "benign loss", step)
            loss = checked(F.cross_entropy(output, y, label_smoothing=smoothing, reduction="none").mean(),
                           official_label_smooth_loss(output, y, factor), "training loss", step)
            sign = 0
            if gate_open(epoch, decay_arr, stride):
                loss, sign = constraint(loss, loss_normal, pre_loss, beta_loss, gamma=gamma, ratio=ratio, w2=w2)
            schedule.append(optimizer_schedule(opt))
            signs.append(sign)
            opt.zero_grad()
            loss.backward()
            opt.step()
            train_normal_loss += loss_normal.item() * y.size(0)
            train_n += y.size(0)
            sched.step()
            all_momentum[rows] = mom
            all_delta[rows] = next_delta
        pre_loss2 = torch.tensor(train_normal_loss / train_n)
        beta_loss = pre_loss2 - pre_loss
        pre_loss = pre_loss2
    return schedule, signs


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)
    ours = robustrain_run(CASE.recipe, batches, epochs=DECAY[-1],
                          overrides={**SHRINK, "regularisers": [dict(_recipe_term(CASE.recipe), segments=DECAY)]})
    cfg = ours.cfg
    term, factor, smoothing = check_recipe(ours, benign="clean")
    attack = ours.trainer.attack
    require(attack.name == "fgsm_mep" and attack.init == "sign" and not attack.clip_init,
            "B-MEP: FGSM-MEP with the ±ε-corner prior, start point not clipped to the box (clip_init: false)")
    require(abs(attack.label_smoothing - smoothing) < 1e-12, "the official attack loss is the label-smoothed CE")
    model = copy.deepcopy(ours.initial_model)
    schedule, signs = official_cs_mep_loop(
        model, batches, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
        eps=cfg.threat.eps, alpha=attack.step, momentum_decay=attack.momentum_decay, epochs_reset=attack.reset_every,
        factor=factor, smoothing=smoothing, gamma=term["gamma"], ratio=term["gamma_ratio"], w2=term["w2"],
        decay_arr=DECAY, stride=term["stride"], seed=cfg.seed)
    hints = [recipe_hint(getattr(attack, "update_bn_stats", False), "the official attack forward updates the BatchNorm "
                         "running statistics: the recipe needs attack.update_bn_stats: true")]
    return compare(CASE, ours, model, ref_schedule=schedule, extra=gate_extra(ours, signs), hints=hints)


CASE = Case(
    recipe="cifar10_convergesmooth_mep",
    official="FAT-CS/ConvergeSmooth FGSM_MEP_CS.py@d94f6bc",
    behaviour="code (FGSM-MEP prior and momentum, start point unclipped, benign loss at x, no weight centralisation, "
              "signed β)",
    by_design="PreActResNet-18 instead of ResNet-18; fixed, pre-augmented batches in a fixed order (the script "
              "re-augments and re-shuffles); prior signs drawn from robustrain's generator; segments and milestones "
              "shrunk to [0, 5, 7, 8] epochs, --epochs_reset to 3",
    run=run,
)
