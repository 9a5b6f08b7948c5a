"""HR — holistic robust training (Bennouna, Lucas & Van Parys, "Certified Robust Neural Networks: Generalization and
Corruption Resistance", ICML 2023, arXiv 2303.02251; official code RyanLucas3/HR_Neural_Networks
HR_Neural_Networks/HR.py@f6d952d, experiments in HR_Neural_Networks/Paper_experiments/).

The paper's HR loss is a distributionally robust upper bound on the test loss under three error sources at once:
evasion (every test point may move within the ε-ball: the loss of an example is its adversarial loss, here the
training attack's CE), poisoning (a fraction α of the training data may be corrupted: that mass may be anywhere,
in particular on the worst point) and statistical error (the sample is finite: a KL ball of radius r). For a batch
with adversarial losses ``ℓ_1..ℓ_N`` the official code (``learning_approach="HD"``, its default and the one every
paper experiment uses) solves, per batch, the convex program

    max_{p, q ∈ Δ_{N+1}, s ≥ 0}  Σ_{i≤N} p_i ℓ_i + p_{N+1} · max_i ℓ_i
    s.t.  q_i + s_i = 1/N (i ≤ N),  Σ_i s_i ≤ α,  KL(q ‖ p) = Σ_{i≤N+1} q_i log(q_i / p_i) ≤ r

(with cvxpy; exponential cones; ECOS, then MOSEK, then SCS) and trains on ``Σ_i p_i ℓ_i + p_{N+1}·max_i ℓ_i`` with
the weights ``p`` detached (a constant tensor; the gradient of ``max`` goes to the largest loss). In words: remove
up to α of the empirical mass and put it on an extra point whose loss is the batch's worst (the paper's worst point
of the whole domain; the code takes the batch maximum), then let the distribution move within KL(q ‖ p) ≤ r.

This procedure computes the same ``p`` in closed form, without a conic solver (``hd_weights``):

1. Poisoning step: the optimum removes the α mass from the examples with the *smallest* losses (each at most its
   1/N) and puts it on the worst point, q_{N+1} = α. (The value of the KL step, written as its dual
   ``min_{λ ≥ 0, η > max ℓ} η + λ(r − 1 + log λ) − λ Σ_i q_i log(η − ℓ_i)``, is for every (λ, η) linear in q with
   coefficients increasing in ℓ_i, so moving mass from a lower to a higher loss never lowers it, and the greedy
   removal maximises every one of these linear functions at once.)
2. KL step: ``p_i ∝ q_i / (η − ℓ_i)`` (zero where q_i = 0) with η > max ℓ chosen so that KL(q ‖ p) = r (the KL is
   continuous and decreasing in η, from ∞ at max ℓ to 0; bisection in float64). r = 0 gives p = q; equal losses
   give p = q for any r.

The main loss then is ``mean_i(w_i ℓ_i)`` with ``w_i = N·(p_i + p_{N+1}·[ℓ_i = max ℓ]/#ties)`` (the per-example
weights hook; torch.max's gradient is shared equally among tied maxima): the official loss exactly.

Paper and code: ``behaviour: code`` also follows the official numerical substitutions (α = 0 is replaced by 1e-6;
r = 0 with α ≠ 0 by 0.001, "for numerical stability" of the conic solver; with both α and r at most 1e-6 the loss
is the plain mean); ``behaviour: paper`` uses α and r as given. The official MNIST experiment (Section 6.1
``mnist_single_param.py``) runs HR with α 0.05, r 0.1 and an L2 PGD-40 (ε 0.2, step 0.01) inside the criterion; the
CIFAR-10 one (Section 6.2 ``Rice_HR/Rice_HR.py``) is Rice et al.'s PGD-AT loop with the HR weights on the PGD-10
losses (defaults α 0, r 0.2).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...errors import ConfigError
from ..hooks import Procedure, StepContext
from . import register_procedure

NUMERICAL_EPS = 1e-6  # the official code's stand-in for α = 0 and its "off" threshold


def poisoned_mass(losses: Tensor, alpha: float) -> Tensor:
    """q (N+1,): the empirical mass 1/N per example with α removed from the smallest losses first, and the removed
    mass on the extra worst point (last entry)."""
    n = losses.numel()
    q = torch.full((n + 1,), 1.0 / n, dtype=torch.float64)
    q[n] = 0.0
    left = float(alpha)
    for i in torch.argsort(losses.double(), stable=True).tolist():
        if left <= 0:
            break
        take = min(1.0 / n, left)
        q[i] -= take
        q[n] += take
        left -= take
    q[:n].clamp_(min=0.0)
    return q


def kl_worst_case(q: Tensor, values: Tensor, r: float, iterations: int = 200) -> Tensor:
    """argmax_p Σ p_i v_i over the simplex with KL(q ‖ p) <= r: ``p ∝ q / (η − v)`` at the η where the KL is r."""
    q, v = q.double(), values.double()
    support = q > 0
    top = v[support].max()
    if r <= 0 or torch.all(v[support] == top):
        return q.clone()

    def p_at(gap: float) -> Tensor:  # η = top + gap
        p = torch.where(support, q / (top + gap - v).clamp(min=1e-300), torch.zeros_like(q))
        return p / p.sum()

    def kl(p: Tensor) -> float:
        return float((q[support] * (q[support] / p[support]).log()).sum())

    spread = float(top - v[support].min())
    lo, hi = math.log(spread * 1e-15), math.log(spread * 1e15)  # log of the gap η − max v
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if kl(p_at(math.exp(mid))) > r:
            lo = mid  # too concentrated: move η away from the maximum
        else:
            hi = mid
    return p_at(math.exp(hi))


def hd_weights(losses: Tensor, *, alpha: float, r: float) -> Tensor:
    """The official HD program's optimal p (N+1,) for per-example losses (N,): see the module docstring."""
    losses = losses.detach().double().cpu()
    q = poisoned_mass(losses, alpha)
    values = torch.cat([losses, losses.max().view(1)])
    return kl_worst_case(q, values, r)


def example_weights(losses: Tensor, p: Tensor) -> Tensor:
    """Per-example weights w (N,) with ``mean(w · ℓ) = Σ_i p_i ℓ_i + p_{N+1} · max ℓ`` (the worst point's mass goes
    to the largest loss, shared among ties as torch.max's gradient is)."""
    n = losses.numel()
    ties = (losses == losses.max()).double().cpu()
    return (n * (p[:n] + p[n] * ties / ties.sum())).to(losses.device)


@register_procedure
class HR(Procedure):
    """Holistic robust training: the main loss weighted per example by the HD program's worst-case distribution.

    Options: ``alpha`` (α in [0, 1): the poisoned fraction), ``r`` (>= 0: the KL radius for the statistical
    error), ``behaviour`` paper | code (the official code's numerical substitutions; see the module docstring).
    The evasion part is the training attack (e.g. PGD-10): HR reweights its per-example losses.
    """

    name = "hr"
    behaviours = ("paper", "code")

    def __init__(self, *, alpha: float = 0.0, r: float = 0.2, behaviour: str = "paper"):
        self.alpha, self.r = float(alpha), float(r)
        if not 0.0 <= self.alpha < 1.0:
            raise ConfigError(f"hr: alpha is the fraction of training data that may be corrupted, in [0, 1) (0.05 "
                              f"in the official MNIST experiment); got {alpha}.")
        if not 0.0 <= self.r < float("inf"):
            raise ConfigError(f"hr: r is the KL radius, a finite number >= 0 (0.1 MNIST, 0.2 CIFAR-10 in the "
                              f"official experiments); got {r}.")
        if behaviour not in self.behaviours:
            raise ConfigError(f"hr: behaviour = {behaviour!r}; expected paper or code.")
        self.behaviour = behaviour
        if behaviour == "code":  # HR_Neural_Networks.__init__: α 0 -> 1e-6; r 0 with α != 0 -> 0.001
            self.alpha = NUMERICAL_EPS if float(alpha) == 0 else self.alpha
            self.r = 0.001 if float(r) == 0 and float(alpha) != 0 else self.r

    @property
    def active(self) -> bool:
        """False when HR is plain ERM: the code's both-parameters-tiny rule, or α = r = 0 (paper)."""
        if self.behaviour == "code":
            return self.r > NUMERICAL_EPS or self.alpha > NUMERICAL_EPS
        return self.r > 0 or self.alpha > 0

    def weights(self, ctx: StepContext, per_example: Tensor) -> Tensor | None:
        if not self.active:
            return None
        p = hd_weights(per_example, alpha=self.alpha, r=self.r)
        return example_weights(per_example.detach(), p)


__all__ = ["HR", "example_weights", "hd_weights", "kl_worst_case", "poisoned_mass"]
