"""DOM_RE with PGD-AT (configs/cifar10_dom_pgd_re.yaml) against tmllab/2024_ICLR_DOM DOM.py@9b4cadb
(``--attack pgd --operate RE``).

The official loop, as read there: PreActResNet-18 on normalised inputs, SGD(lr_max 0.1, momentum 0.9, weight decay
5e-4); per batch, ``t = epoch + (i+1)/n`` and lr = lr_max for ``t <= E/2``, lr_max/10. for ``t <= 3E/4``, else
lr_max/100.; the natural CE per example of ``model(x)`` and its mask ``ℓ_nat >= clamp``; ``attack_pgd`` (δ ~ U[−ε, ε]
clipped to the box, 10 × (mean CE at x + δ, backward, δ ← clamp(δ + α·sign ∇, −ε, ε), box clip), one more forward to
score the restart (kept: its loss >= 0)); ``model.train()``; the per-example robust CE at clamp(x + δ, 0, 1), times
the mask when ``t >= E/2``, mean over the batch; step. After every epoch the evaluation puts the model in eval mode,
so the natural forward and the attack of the next epoch's first batch run in eval mode; every other forward runs in
train mode and moves the BatchNorm statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .case_pgd_at import OFFICIAL as PGD_AT_OFFICIAL
from .case_pgd_at import attack_pgd  # DOM.py's attack_pgd is train_cifar.py's (restarts 1, L∞, no early stop)
from .harness import (Case, compare_lockstep, has_input_normalisation, optimizer_schedule, parity_batches,
                      recipe_hint, robustrain_run, trainer_generator)
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 4, 5, 16
# the 200-epoch milestones 100 and 150 scaled to 4 epochs; τ lowered to where a width-4 network's natural CE is after
# a few steps, so that the mask removes some examples (the case checks that it does)
TAU = 2.25
SHRINK = {"model.kwargs": {"width": 4}, "schedule.milestones": [2, 3],
          "procedures": [{"name": "dom", "operate": "remove", "threshold": TAU, "start": 0.5,
                          "first_batch_bn_mode": "eval"}]}

# the official script's settings (DOM.py defaults and the README's PGD RE command: Rice's PGD-AT settings but for the
# lr's position), checked on the unshrunk recipe
OFFICIAL = {**PGD_AT_OFFICIAL, 'schedule.at': 'epoch',
            'procedures': [{'name': 'dom', 'operate': 'remove', 'threshold': 1.5, 'start': 0.5,
                            'first_batch_bn_mode': 'eval'}]}


def dom_piecewise(lr_max, epochs):
    def lr_schedule(t):
        if t <= epochs / 2:
            return lr_max
        elif t <= epochs * 3 / 4:
            return lr_max / 10.
        return lr_max / 100.
    return lr_schedule


def official_loop(model, batches, *, epochs, lr_max, eps, alpha, iters, clamp, seed, removed, score_forward=True):
    opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=0.9, weight_decay=5e-4)
    lr_schedule = dom_piecewise(lr_max, epochs)
    gen = trainer_generator(seed)
    n = len(batches)
    schedule = []
    for epoch in range(epochs):
        for i, (x, y) in enumerate(batches):
            training_t = epoch + ((i + 1) / n)
            opt.param_groups[0].update(lr=lr_schedule(training_t))
            with torch.no_grad():
                natural = F.cross_entropy(model(x), y, reduction="none")
            loss_clamp = (natural >= clamp).detach()
            delta = attack_pgd(model, x, y, eps, alpha, iters, gen, score_forward)
            model.train()
            robust = F.cross_entropy(model(torch.clamp(x + delta, 0, 1)), y, reduction="none")
            if training_t >= epochs / 2:
                robust = robust * loss_clamp
                removed.append(int((~loss_clamp).sum()))
            loss = robust.mean()
            schedule.append(optimizer_schedule(opt))
            opt.zero_grad()
            loss.backward()
            opt.step()
            yield opt
        model.eval()  # the per-epoch evaluation (its forwards change nothing)
    return schedule


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)
    removed: list[int] = []

    def references(new_model, cfg):
        kw = dict(epochs=EPOCHS, lr_max=cfg.optim.lr, eps=cfg.threat.eps, alpha=cfg.attack["step"],
                  iters=cfg.attack["steps"], clamp=cfg.procedures[0]["threshold"], seed=cfg.seed)
        official, aligned = new_model(), new_model()
        return {"official": (official, official_loop(official, batches, removed=removed, **kw)),
                "aligned": (aligned, official_loop(aligned, batches, removed=[], score_forward=False, **kw))}

    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK, lockstep=references)
    cfg = ours.cfg
    assert 0 < sum(removed) < len(removed) * BATCH, (
        f"the official mask removed {sum(removed)} of {len(removed) * BATCH} examples: the case does not exercise "
        "DOM_RE; adjust TAU")
    hints = [
        recipe_hint(has_input_normalisation(ours.trainer.model), "the official script normalises the inputs"),
        recipe_hint(cfg.attack.get("update_bn_stats") and cfg.attack.get("first_batch_bn_mode") == "eval",
                    "the official attack moves the BatchNorm statistics, except on each epoch's first batch after "
                    "the first (eval mode): attack.update_bn_stats: true, first_batch_bn_mode: eval"),
    ]
    result = compare_lockstep(CASE, ours, constants=recipe_constants(CASE.recipe, OFFICIAL), hints=hints,
                              buffers_by_design=BUFFERS)
    result.extra["removed"] = f"{sum(removed)} of {len(removed) * BATCH}"
    return result


BUFFERS = ("the official attack runs one more forward at x + δ to score its single restart (train mode: it moves "
           "only the BatchNorm running statistics)")

CASE = Case(
    recipe="cifar10_dom_pgd_re",
    official="tmllab/2024_ICLR_DOM DOM.py@9b4cadb",
    behaviour="code (natural CE mask from t = epoch + (i+1)/n >= E/2, mean over the whole batch; lr decays when "
              "t > E/2; each epoch's first batch in eval mode)",
    by_design="BN running statistics: " + BUFFERS + "; τ lowered to 2.25 for the width-4 network; start drawn from "
              "robustrain's generator; normalisation inside the model; lockstep comparison (the restart-scoring forward's "
              "statistics reach the weights through the eval-mode first batches)",
    run=run,
)
