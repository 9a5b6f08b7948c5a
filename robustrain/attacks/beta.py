"""BETA, the BEst Targeted Attack (Robey, Latorre, Pappas, Hassani & Cevher, "Adversarial Training Should Be Cast as
a Non-Zero-Sum Game", ICLR 2024, arXiv 2306.11035).

The paper's argument: the zero-sum surrogate of adversarial training (the attacker ascends the cross-entropy) voids
the guarantee on the 0-1 robust error, because maximising an upper bound of the error need not find a
misclassifying point. In its non-zero-sum (bilevel) formulation the defender minimises a surrogate (CE) at the
attacker's point, while the attacker maximises the *negative margin* of the classification directly: for an example
``(x, y)`` and each class ``j ≠ y`` the margin ``M_j(x + δ) = z_j(x + δ) − z_y(x + δ)`` (``z`` the logits) is
maximised over the threat model by its own projected gradient ascent, and the perturbation of the class with the
largest final margin is kept: ``j* = argmax_j M_j(x + δ_j)``, ``δ* = δ_{j*}`` (the paper's BETA algorithm). A
positive margin is a misclassification, so the attacker optimises the quantity the robust 0-1 error counts.

What this attack does (per batch, ``K`` classes read off the model's output): for ``k = 1 .. K−1`` the target of
each example is ``j = (y + k) mod K`` (every class other than its label, each exactly once, in one batched run
per ``k``: the target is computed from the logits' width, so no extra forward); per target and restart: start uniform in the ε-ball ∩ box (PGD's start; ``random_start: false``: at
``x``), ``steps`` ascent steps of size ``step`` on the summed margins (sign of the gradient for L∞, normalised
gradient for L2, then projection onto the ball and the box clip: the library's PGD step), one forward at the last
iterate to score it; per example, the target (and restart) with the largest final margin wins. Cost: ``(K−1) ×
restarts × (steps + 1)`` forwards and ``(K−1) × restarts × steps`` input-gradient backwards: ``K−1`` times PGD's.

BETA-AT (training) is this attack as the training attack with the plain CE objective: ``attack: {name: beta}``;
the defender's loss is untouched (the point of the non-zero-sum game). As an evaluation attack:
``robustrain eval RUN --attack beta`` (or ``eval.attack: {name: beta, steps: ...}``).

Sources: the paper (the arXiv v2 text, read for the formulation above). The official code was not found by the
search tools used for this port (no repository of the authors with BETA's code in the index); nothing here is
transcribed from it, and the recipes say ``behaviour: paper``. The random start and the scoring of the last
iterate (not the best iterate) are choices of this port where the paper's algorithm leaves them open; with
``restarts`` > 1 the restarts compete per example on the same final margin.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import kernels
from ..errors import ConfigError
from ..threat import ThreatModel
from .base import Attack, AttackResult, register_attack


def targeted_margin(logits: Tensor, labels_and_offsets: Tensor) -> Tensor:
    """Per-example margin ``z_j − z_y`` from logits (B, K) and a (B, 2) tensor of (label y, offset k): the target is
    ``j = (y + k) mod K``, so offsets 1 .. K−1 name every class other than the label."""
    y, k = labels_and_offsets[:, 0:1], labels_and_offsets[:, 1:2]
    logits = logits.float()
    j = (y + k) % logits.shape[1]
    return (logits.gather(1, j) - logits.gather(1, y)).squeeze(1)


def best_target(margins: Tensor) -> Tensor:
    """The index (over the first dimension, the targets) of the largest margin per example; ties: the first."""
    return margins.argmax(dim=0)


@register_attack
class BETA(Attack):
    """BEst Targeted Attack: one margin-ascent PGD per class other than the label, the largest final margin wins.

    Args:
        threat: the threat model.
        steps: ascent steps per target (and restart).
        step: step size in input units; default ε/4 (PGD's).
        restarts: random restarts per target; every (target, restart) competes on its final margin.
        random_start: start uniform in the ball ∩ box (else at x).
        **kwargs: ``bn_mode``, ``update_bn_stats``, ``first_batch_bn_mode``, ``amp_dtype``, ``compile`` of
            :class:`Attack`. The ascended loss is the margin; ``loss_fn`` is refused.
    """

    name = "beta"
    scaled_fields = ("step",)

    def __init__(self, threat: ThreatModel, *, steps: int = 10, step: float | None = None, restarts: int = 1,
                 random_start: bool = True, **kwargs):
        if kwargs.get("loss_fn") is not None:
            raise ConfigError("beta: the attack ascends the margin z_j − z_y of each target class; it takes no "
                              "loss_fn (use pgd for another loss).")
        kwargs.pop("loss_fn", None)
        super().__init__(threat, loss_fn=targeted_margin, **kwargs)
        if int(steps) < 1 or int(restarts) < 1:
            raise ConfigError(f"beta: steps and restarts must be >= 1, got steps={steps}, restarts={restarts}.")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.step = float(threat.eps / 4 if step is None else step)
        self._record_step(step, "ε/4")
        self.random_start = bool(random_start)

    @property
    def label(self) -> str:
        return f"beta-{self.steps}" + (f"-{self.restarts}" if self.restarts > 1 else "")

    def _procedure(self) -> dict:
        return {"steps": self.steps, "restarts": self.restarts,
                "start": self.threat.pgd_start_rule if self.random_start else "the clean point",
                "projection": "ε-ball", "box_clip": "every step"}

    def _options(self) -> dict:
        return {"steps": self.steps, "restarts": self.restarts, "random_start": self.random_start}

    def loss_name(self) -> str:
        return "margin z_j - z_y per target class j != y (largest final margin kept)"

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> AttackResult:
        xf = x.float()
        first: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        best_delta = best_margin = None
        num_classes: int | None = None
        k = 1
        while num_classes is None or k < num_classes:
            yk = torch.stack([y, torch.full_like(y, k)], dim=1)
            for _ in range(self.restarts):
                delta = kernels.pgd_start(self.threat, x, generator) if self.random_start else torch.zeros_like(xf)
                for _ in range(self.steps):
                    grad, logits, margin = self.input_gradient(model, x, delta, yk)
                    if first is None:
                        first = (delta, logits, margin, grad)
                        num_classes = logits.shape[1]
                        if num_classes < 2:
                            raise ValueError(f"beta: the model has {num_classes} output; a margin needs >= 2 classes.")
                    delta = kernels.ascent_step(self.threat, delta, grad, x, self.step)
                with torch.no_grad():
                    margin = targeted_margin(self.forward(model, x, delta), yk)
                if best_margin is None:
                    best_delta, best_margin = delta.clone(), margin
                else:
                    wins = margin > best_margin
                    best_delta = torch.where(wins.view(-1, *[1] * (x.dim() - 1)), delta, best_delta)
                    best_margin = torch.where(wins, margin, best_margin)
            k += 1
        assert first is not None and best_delta is not None
        delta0, logits0, margin0, grad0 = first
        return AttackResult(x_adv=(x + best_delta).to(x.dtype), delta=best_delta, x_init=(x + delta0).to(x.dtype),
                            logits_init=logits0, loss_init=margin0, grad_init=grad0, loss_adv=best_margin)


__all__ = ["BETA", "best_target", "targeted_margin"]
