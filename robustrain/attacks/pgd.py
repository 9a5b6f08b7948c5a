"""PGD (Madry et al., ICLR 2018, arXiv 1706.06083): k projected ascent steps, with restarts.

Each restart starts from a random point of the ε-ball ∩ box (``ThreatModel.pgd_start``) and takes ``steps`` steps of size
``step`` along the threat model's ascent direction (sign for L∞, normalised gradient for L2), each
followed by projection onto the ball and the box clip. With ``keep_best`` the attack returns, per
example, the best point seen over every iterate of every restart: a misclassified point beats a
correctly classified one, and among equals the higher loss wins. Iterates 0..k-1 are scored with the
forward pass the gradient needs anyway; only the last iterate of a restart costs one extra forward.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import kernels
from ..errors import ConfigError
from ..threat import ThreatModel
from .base import Attack, AttackResult, register_attack


class _Best:
    """Per-example keep-best bookkeeping (misclassified first, then highest loss)."""

    def __init__(self) -> None:
        self.delta: Tensor | None = None
        self.loss: Tensor | None = None
        self.wrong: Tensor | None = None

    def update(self, delta: Tensor, logits: Tensor, loss: Tensor, y: Tensor) -> None:
        wrong = logits.argmax(dim=1) != y
        if self.delta is None:
            self.delta, self.loss, self.wrong = delta.clone(), loss.clone(), wrong
            return
        self.delta, self.loss, self.wrong = kernels.keep_best_update(self.delta, self.loss, self.wrong, delta, loss,
                                                                     wrong)


@register_attack
class PGD(Attack):
    """Projected gradient descent with restarts and per-example keep-best.

    Args:
        threat: the threat model.
        steps: ascent steps per restart (k).
        step: step size α in input units; default ε/4 (2/255 at ε = 8/255, Rice et al.).
        restarts: number of random restarts (r); the best per example is kept across them.
        random_start: start from a uniform point of the ball (else from x).
        keep_best: return the best iterate per example instead of the last one. Off for training
            attacks that follow Rice et al. (last iterate, one restart), on for evaluation.
        **kwargs: ``loss_fn``, ``bn_mode``, ``amp_dtype``, ``compile`` of :class:`Attack`.
    """

    name = "pgd"
    scaled_fields = ("step",)

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 10,
        step: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        keep_best: bool = True,
        **kwargs,
    ):
        super().__init__(threat, **kwargs)
        if int(steps) < 1 or int(restarts) < 1:
            raise ConfigError(f"pgd: steps and restarts must be >= 1, got steps={steps}, restarts={restarts}.")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.step = float(threat.eps / 4 if step is None else step)
        self._record_step(step, "ε/4")
        self.random_start = bool(random_start)
        self.keep_best = bool(keep_best)

    @property
    def label(self) -> str:
        return f"pgd-{self.steps}-{self.restarts}" if self.name == "pgd" else self.name

    def _start_rule(self) -> str:
        return self.threat.pgd_start_rule

    def _procedure(self) -> dict:
        return {"steps": self.steps, "restarts": self.restarts,
                "start": self._start_rule() if self.random_start else "the clean point",
                "projection": "ε-ball", "box_clip": "every step"}

    def _options(self) -> dict:
        return {"steps": self.steps, "restarts": self.restarts, "random_start": self.random_start,
                "keep_best": self.keep_best}

    def start(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """The random start of one restart (fp32): uniform in the ball ∩ box; presets may override it."""
        return kernels.pgd_start(self.threat, x, generator)

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> AttackResult:
        xf = x.float()
        best = _Best()
        first: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        score_iterates = self.keep_best
        score_final = self.keep_best or self.restarts > 1
        for _ in range(self.restarts):
            if self.random_start:
                delta = self.start(x, generator)
            else:
                delta = torch.zeros_like(xf)
            for t in range(self.steps):
                grad, logits, loss = self.input_gradient(model, x, delta, y)
                if first is None:
                    first = (delta, logits, loss, grad)
                if score_iterates:
                    best.update(delta, logits, loss, y)
                delta = kernels.ascent_step(self.threat, delta, grad, x, self.step)
            if score_final:
                with torch.no_grad():
                    logits = self.forward(model, x, delta)
                best.update(delta, logits, self.loss_fn(logits, y), y)
        assert first is not None
        delta0, logits0, loss0, grad0 = first
        if score_final:
            delta, loss_adv = best.delta, best.loss
        else:
            loss_adv = None
        return AttackResult(
            x_adv=(x + delta).to(x.dtype),
            delta=delta,
            x_init=(x + delta0).to(x.dtype),
            logits_init=logits0,
            loss_init=loss0,
            grad_init=grad0,
            loss_adv=loss_adv,
        )
