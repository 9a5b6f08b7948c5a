"""HR with PGD-AT (configs/cifar10_hr.yaml) against RyanLucas3/HR_Neural_Networks
Paper_experiments/Section_6.2/Rice_HR/Rice_HR.py + HR_Neural_Networks/HR.py@f6d952d (``learning_approach="HD"``).

The official loop, as read there: Rice et al.'s PGD-AT loop (case_pgd_at.py: piecewise lr at t = epoch + (i+1)/n,
PGD-10 in train mode with its restart-scoring forward, a clean train-mode forward after the step) whose loss is
replaced by the HR loss: the per-example CE at the PGD point, its HD weights p from the convex program of
``_initialise_HD_problem`` (solved there by cvxpy with ECOS; transcribed here and solved by SciPy's SLSQP, see
:func:`official_hd_program`), then ``torch.dot(p[:N], ℓ) + torch.max(ℓ)·p[N]`` with p in float32 and detached.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .case_pgd_at import OFFICIAL as PGD_AT_OFFICIAL
from .case_pgd_at import attack_pgd, rice_piecewise
from .harness import Case, compare_lockstep, optimizer_schedule, parity_batches, robustrain_run, trainer_generator
from .harness import recipe_constants

EPOCHS, N_BATCHES, BATCH = 4, 5, 16
ALPHA = 0.05  # the recipe's α is the script's default 0 (1e-6 in the code); the case also exercises the poisoning
SHRINK = {"model.kwargs": {"width": 4}, "schedule.milestones": [2, 3],
          "procedures": [{"name": "hr", "alpha": ALPHA, "r": 0.2, "behaviour": "code"}]}

# Rice_HR.py's settings (its get_args defaults: Rice's, with --alpha 0 --r 0.2), checked on the unshrunk recipe
OFFICIAL = {**PGD_AT_OFFICIAL,
            'procedures': [{'name': 'hr', 'alpha': 0.0, 'r': 0.2, 'behaviour': 'code'}]}


def official_hd_program(loss: np.ndarray, alpha: float, r: float):
    """HR.py's HD program, transcribed: variables p, q ∈ R^{N+1} and s ∈ R^N, all >= 0; maximise
    Σ_{i<N} p_i ℓ_i + p_N·max ℓ subject to Σp = 1, Σq = 1, q_i + s_i = 1/N, Σs <= α and Σ_i q_i log(q_i/p_i) <= r
    (its exponential cones ExpCone(−t, q, p) with Σt <= r). Solved with SLSQP instead of ECOS / MOSEK / SCS.
    Returns (p, objective, converged)."""
    from scipy.optimize import minimize

    n = len(loss)
    worst = loss.max()
    emp = np.full(n, 1 / n)

    def split(z):
        return z[:n + 1], z[n + 1:2 * n + 2], z[2 * n + 2:]

    def objective(z):
        p, _, _ = split(z)
        return -(p[:n] @ loss + p[n] * worst)

    def objective_grad(z):
        return np.concatenate([-loss, [-worst], np.zeros(2 * n + 1)])

    def kl_slack(z):
        p, q, _ = split(z)
        m = q > 1e-300
        return r - np.sum(q[m] * (np.log(q[m]) - np.log(np.maximum(p[m], 1e-300))))

    def rows(block, index, width):  # unit rows for the variables of one block
        out = np.zeros((len(index), 3 * n + 2))
        out[np.arange(len(index)), block + np.asarray(index)] = 1
        return out

    sum_p = rows(0, range(n + 1), n + 1).sum(0)
    sum_q = rows(n + 1, range(n + 1), n + 1).sum(0)
    q_plus_s = rows(n + 1, range(n), n) + rows(2 * n + 2, range(n), n)
    constraints = [
        {"type": "eq", "fun": lambda z: split(z)[0].sum() - 1, "jac": lambda z: sum_p},
        {"type": "eq", "fun": lambda z: split(z)[1].sum() - 1, "jac": lambda z: sum_q},
        {"type": "eq", "fun": lambda z: split(z)[1][:n] + split(z)[2] - emp, "jac": lambda z: q_plus_s},
        {"type": "ineq", "fun": lambda z: alpha - split(z)[2].sum(),
         "jac": lambda z: -rows(2 * n + 2, range(n), n).sum(0)},
        {"type": "ineq", "fun": kl_slack},  # finite differences: its gradient is unbounded where q_i = 0
    ]
    z0 = np.concatenate([np.full(n + 1, 1 / (n + 1)), np.append(emp * (1 - alpha), alpha), emp * alpha])
    bounds = [(1e-12, 1)] * (n + 1) + [(0, 1)] * (n + 1) + [(0, 1 / n)] * n
    res = minimize(objective, z0, jac=objective_grad, method="SLSQP", constraints=constraints, bounds=bounds,
                   options={"ftol": 1e-15, "maxiter": 5000})
    return split(res.x)[0], -res.fun, bool(res.success)


def official_loop(model, batches, *, epochs, lr_max, eps, alpha_step, iters, alpha, r, seed, extra_forwards=True):
    opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=0.9, weight_decay=5e-4)
    lr_schedule = rice_piecewise(lr_max, epochs)
    gen = trainer_generator(seed)
    n = len(batches)
    schedule = []
    for epoch in range(epochs):
        model.train()
        for i, (x, y) in enumerate(batches):
            opt.param_groups[0].update(lr=lr_schedule(epoch + (i + 1) / n))
            delta = attack_pgd(model, x, y, eps, alpha_step, iters, gen, extra_forwards)
            robust_loss = F.cross_entropy(model(torch.clamp(x + delta, 0, 1)), y, reduction="none")
            p, _, _ = official_hd_program(robust_loss.detach().double().numpy(), alpha, r)
            weights = torch.from_numpy(p).to(torch.float32)
            loss = torch.dot(weights[:len(y)], robust_loss) + torch.max(robust_loss) * weights[len(y)]
            schedule.append(optimizer_schedule(opt))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if extra_forwards:
                with torch.no_grad():
                    model(x)  # the clean forward for the logged training accuracy
            yield opt
    return schedule


def run():
    batches = parity_batches("cifar10", N_BATCHES, BATCH, seed=0)

    def references(new_model, cfg):
        kw = dict(epochs=EPOCHS, lr_max=cfg.optim.lr, eps=cfg.threat.eps, alpha_step=cfg.attack["step"],
                  iters=cfg.attack["steps"], alpha=cfg.procedures[0]["alpha"], r=cfg.procedures[0]["r"],
                  seed=cfg.seed)
        official, aligned = new_model(), new_model()
        return {"official": (official, official_loop(official, batches, **kw)),
                "aligned": (aligned, official_loop(aligned, batches, extra_forwards=False, **kw))}

    ours = robustrain_run(CASE.recipe, batches, epochs=EPOCHS, overrides=SHRINK, lockstep=references)
    return compare_lockstep(CASE, ours, constants=recipe_constants(CASE.recipe, OFFICIAL), buffers_by_design=BUFFERS)


BUFFERS = ("the official loop runs two more train-mode forwards per batch (the restart-scoring forward at x + δ and a "
           "clean forward after the step, for logging) that move only the BatchNorm running statistics")

CASE = Case(
    recipe="cifar10_hr",
    official="RyanLucas3/HR_Neural_Networks Paper_experiments/Section_6.2/Rice_HR/Rice_HR.py + HR.py@f6d952d",
    behaviour="code (HD program; α = 0 read as 1e-6)",
    by_design="BN running statistics: " + BUFFERS + "; the HD program solved by SLSQP (the official: cvxpy ECOS) "
              "against robustrain's closed form; α = 0.05 in the shrunk run to exercise the poisoning step; "
              "lockstep comparison",
    run=run,
)
