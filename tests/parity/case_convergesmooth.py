"""ConvergeSmooth B-RS, official-code behaviour, on CIFAR-10 (configs/cifar10_convergesmooth_code.yaml) against
FAT-CS/ConvergeSmooth FGSM_RS_CS.py@d94f6bc (utils.py: mean 0 / std 1, so raw [0,1] inputs).

The official loop, as read there (no ``--initialize``, no ``--reg-single`` / ``--reg-multi``, so the λ term is 0;
``--factor 0.6``, ``--gamma 0.03``, ``--ratio 1``, ``--w2 1``; stride 1 as FGSM_MEP_CS.py, the script leaves it
undefined): SGD(lr, momentum 0.9, weight decay 5e-4) with a per-iteration
``torch.optim.lr_scheduler.MultiStepLR(milestones = [T·d₁/d₃, T·d₂/d₃], γ 0.1)`` for ``decay_arr = [d₀, d₁, d₂, d₃]``
(``[0, 100, 105, 110]``) and ``T = d₃ × batches``. The model stays in train mode (every forward updates the BatchNorm
running statistics). Per batch:

* data = clamp(x + U[−ε, ε], 0, 1) (pixel units); forward at data, ∇_data of the mean plain CE;
  x_adv = clamp(data + α·sign ∇, 0, 1) (the projection onto the ε-ball is commented out);
* forward at x_adv: loss = label-smoothed CE (``LabelSmoothLoss``: 0.6 on the true class, 0.4/9 elsewhere);
* the "benign" forward ``model(data)``: ``data`` was overwritten by the random start, so L_ben is the label-smoothed
  CE at x + δ₀, with its own graph;
* if ``s + stride < epoch < e − stride`` for a pair of consecutive ``decay_arr`` entries and
  |L_ben − u| > min(max(γ/ratio, β), γ): loss += w2·L_ben when L_ben > u, else loss −= w2·L_ben;
* zero_grad, backward, step, scheduler step; after the epoch u ← mean L_ben of the epoch (per example),
  β ← u_new − u_old.

Rounding. FGSM's sign(∇) turns any one-ulp difference into a different pixel, and 20 steps of training amplify it to
O(1) (see harness.box), so the reference writes the clip of the random start and of x_adv, the label-smoothed CE of
the training loss (torch's ``label_smoothing`` (1 − 0.6)·C/(C − 1) = 4/9, the same target) and of L_ben (the
smoothed target's two terms) in robustrain's floating-point order; at every step it checks these against the
official expressions (``LabelSmoothLoss`` with the numpy target) to 1e-5.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .harness import (Case, box, compare, has_input_normalisation, optimizer_schedule, parity_batches, recipe_hint,
                      require, robustrain_run, trainer_generator, uniform)

N_BATCHES, BATCH = 3, 16
DECAY = [0, 5, 7, 8]
"""The shrunk ``decay_arr``: 8 epochs of 3 batches (24 steps), lr ×0.1 at epochs 5 and 7, the gate open in epochs
2–3 (stride 1), as [0, 100, 105, 110] opens it in 2–98, 102–103, 107–108."""
SHRINK = {"model.kwargs": {"width": 4}, "schedule.milestones": DECAY[1:-1]}


def official_label_smooth_loss(logits, y, factor):
    """FGSM_RS_CS.py's ``LabelSmoothLoss(input, _label_smoothing(y, factor, C))`` (numpy target, cast to fp32)."""
    c = logits.shape[1]
    one_hot = np.eye(c)[y.cpu().numpy()]
    target = torch.tensor(one_hot * factor + (one_hot - 1.0) * ((factor - 1) / float(c - 1))).float()
    return (-target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def smoothed_target_ce(logits, y, factor):
    """The same loss (``factor`` on the true class, (1 − factor)/(C − 1) elsewhere) as a sum of two terms, in
    robustrain's rounding order."""
    logp = F.log_softmax(logits, dim=1)
    true = logp.gather(1, y[:, None]).squeeze(1)
    other = (logp.sum(dim=1) - true) / (logp.shape[1] - 1)
    return (-(factor * true + (1 - factor) * other)).mean()


def checked(value, official, what, step):
    err = abs(value.item() - official.item()) / max(abs(official.item()), 1e-12)
    if err > 1e-5:
        raise AssertionError(f"step {step}: the reference's {what} ({value.item():.8g}) is not the official "
                             f"expression's ({official.item():.8g})")
    return value


def gate_open(epoch, decay_arr, stride):
    return any(decay_arr[j] + stride < epoch < decay_arr[j + 1] - stride for j in range(len(decay_arr) - 1))


def constraint(loss, loss_normal, pre_loss, beta_loss, *, gamma, ratio, w2):
    """The batch-based constraint as the script computes it (fp32 tensors)."""
    gamma_max = torch.tensor(gamma)
    gamma_min = gamma_max / ratio
    if torch.abs(loss_normal - pre_loss) > min(max(gamma_min, beta_loss), gamma_max):
        if loss_normal - pre_loss > 0:
            return loss + w2 * loss_normal, 1
        return loss - w2 * loss_normal, -1
    return loss, 0


def official_cs_rs_loop(model, batches, *, lr, momentum, weight_decay, eps, alpha, factor, smoothing, gamma, ratio,
                        w2, decay_arr, stride, seed):
    """FGSM_RS_CS.py's training loop for ``decay_arr[-1]`` epochs. Returns (lr, momentum) per step and the gate's
    sign per step (+1 / −1 / 0)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    lr_steps = decay_arr[-1] * len(batches)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[lr_steps * d / decay_arr[-1] for d in decay_arr[1:-1]], gamma=0.1)
    gen = trainer_generator(seed)
    pre_loss, beta_loss = torch.tensor(0.0), torch.tensor(0.0)
    schedule, signs = [], []
    model.train()
    for epoch in range(decay_arr[-1]):
        train_loss_normal, train_n = 0.0, 0
        for x, y in batches:
            step = len(schedule)
            delta0 = box(x, uniform(x, eps, gen))
            data = (x + delta0).requires_grad_(True)  # clamp(x + U[−ε, ε], 0, 1)
            ori_loss = F.cross_entropy(model(data), y)
            (grad,) = torch.autograd.grad(ori_loss, [data])
            data = data.detach()
            x_adv = x + box(x, delta0 + alpha * grad.sign())  # clamp(data + α·sign ∇, 0, 1)
            output = model(x_adv)
            benign_output = model(data)
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
            sched.step()
            train_loss_normal += loss_normal.item() * y.size(0)
            train_n += y.size(0)
        pre_loss2 = torch.tensor(train_loss_normal / train_n)
        beta_loss = pre_loss2 - pre_loss
        pre_loss = pre_loss2
    return schedule, signs


def check_recipe(ours, *, benign):
    cfg = ours.cfg
    require(not has_input_normalisation(ours.trainer.model),
            "the official code's utils.py normalises with mean 0 / std 1: model.normalise: false")
    terms = {t["name"]: t for t in cfg.regularisers}
    require(set(terms) == {"convergesmooth"}, "the public code has no weight centralisation (and no other term)")
    term = terms["convergesmooth"]
    require(term.get("benign") == benign, f"the official benign forward is at the {benign} point (benign: {benign})")
    require(not term.get("example_based", False), "the official constraint is batch-based")
    smoothing = cfg.train.label_smoothing
    factor = term["smooth_target"]
    require(abs(smoothing - (1 - factor) * 10 / 9) < 1e-12,
            "the official label smoothing (--factor 0.6: 0.6 on the true class) is train.label_smoothing 4/9")
    return term, factor, smoothing


def gate_extra(ours, signs):
    ours_signs = [int(log.get("convergesmooth/sign", 0.0)) for log in ours.logs]
    require(ours_signs == signs, f"the constraint fired differently: robustrain {ours_signs}, official {signs}")
    require(any(signs), "the constraint never fired in this run: the comparison would not test it")
    return {"gate_signs": "".join("+" if s > 0 else "-" if s < 0 else "." for s in signs)}


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)
    ours = robustrain_run(CASE.recipe, batches, epochs=DECAY[-1],
                          overrides={**SHRINK, "regularisers": [dict(_recipe_term(), segments=DECAY)]})
    cfg = ours.cfg
    term, factor, smoothing = check_recipe(ours, benign="init")
    attack = ours.trainer.attack
    require(attack.init_scale == 1 and not attack.project, "B-RS: start U[−ε, ε], no projection")
    model = copy.deepcopy(ours.initial_model)
    schedule, signs = official_cs_rs_loop(
        model, batches, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
        eps=cfg.threat.eps, alpha=attack.step, factor=factor, smoothing=smoothing, gamma=term["gamma"],
        ratio=term["gamma_ratio"], w2=term["w2"], decay_arr=DECAY, stride=term["stride"], seed=cfg.seed)
    hints = [recipe_hint(getattr(attack, "update_bn_stats", False), "the official attack forward updates the BatchNorm "
                         "running statistics: the recipe needs attack.update_bn_stats: true")]
    return compare(CASE, ours, model, ref_schedule=schedule, extra=gate_extra(ours, signs), hints=hints)


def _recipe_term(recipe="cifar10_convergesmooth_code"):
    """The recipe's convergesmooth entry (the case replaces only its segments by the shrunk ``DECAY``)."""
    from .harness import load_recipe

    (term,) = [t for t in load_recipe(recipe, epochs=1).regularisers if t["name"] == "convergesmooth"]
    return dict(term)


CASE = Case(
    recipe="cifar10_convergesmooth_code",
    official="FAT-CS/ConvergeSmooth FGSM_RS_CS.py@d94f6bc",
    behaviour="code (benign loss at the random start x + δ₀, no weight centralisation, signed β); "
              "cifar10_convergesmooth.yaml is the paper's (benign loss at x, weight centralisation)",
    by_design="PreActResNet-18 instead of ResNet-18; random start drawn from robustrain's generator; segments and "
              "milestones shrunk to [0, 5, 7, 8] epochs; the script's undefined args.lr / args.stride / args.epochs "
              "read as --lr-max 0.1, stride 1, decay_arr[3] epochs",
    run=run,
)
