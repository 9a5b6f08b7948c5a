"""ConvergeSmooth (Zhao, Zhang, Kong & Yin, "Fast adversarial training with smooth convergence", ICCV 2023;
FAT-CS/ConvergeSmooth ``FGSM_RS_CS.py`` / ``FGSM_MEP_CS.py``, commit d94f6bc): the loss-convergence constraint
on the benign loss, w1 = 0 as in the public code.

Per batch, with L_ben the label-smoothed CE on the benign batch (an extra forward in train mode), u_{t−1} the
mean benign loss of the previous epoch and d = u_{t−1} − u_{t−2}:

    γ_t  = min(max(|d|, γ_min), γ_max),   γ_min = γ_max / ratio
    term = +w2·L_ben  if L_ben − u_{t−1} >  γ_t    (under-fitting: pull the benign loss down)
           −w2·L_ben  if u_{t−1} − L_ben >  γ_t    (over-fitting: push it back up)
           0          otherwise                    (= the gradient of w2·|L_ben − u_{t−1}| outside the band)

only while the epoch lies strictly inside a constant-learning-rate segment with a margin of ``stride`` epochs
(segments [0,100], [100,105], [105,110] and stride 1 → epochs 2–98, 102–103, 107–108, 0-based); u_t is the mean
benign loss of epoch t (per example), updated at the end of the epoch.

Paper vs code: the code's defaults are γ_max = 0.03 and ratio 1 (γ_t constant 0.03; a third-party summary of the
paper gives ratio 1.5 [unverified]); the code uses the signed d (``signed_d: true``) where the paper's formula
has |d| (the default here; irrelevant at ratio 1). Before two epoch means exist γ_t = γ_max. The
example-based variant (``example_based: true``) applies the gate and the sign to each example's benign loss
against the same epoch mean: term = (w2/B)·Σ_i gate_i·sign_i·ℓ_i.

The "benign" point (``benign``), a difference between the paper and one of the two official scripts:

* ``clean`` (default): L_ben at the clean batch x — the paper's L(x, θ), and ``FGSM_MEP_CS.py`` (B-MEP), whose
  benign forward is ``model(X)``.
* ``init``: L_ben at the training attack's start point x + δ₀ (``AttackResult.x_init``, the random start clipped
  to the box) — what ``FGSM_RS_CS.py`` (B-RS) computes: it overwrites ``data`` with ``clamp(x + U[−ε, ε], 0, 1)``
  before the attack, so its "benign" forward ``model(data)`` runs at x + δ₀. It is a separate forward with the
  graph to the weights (label-smoothed CE, train mode), so the gated ±w2·L_ben trains through it, and the epoch
  means u_t are means of this loss. With a zero-start attack (x_init = x) it equals ``clean``.

The code's ``--initialize`` (reuse the attack's own start-point loss instead of a benign forward) is not offered
separately: in ``FGSM_RS_CS.py`` that loss is plain CE whose graph ``torch.autograd.grad`` has already freed (the
backward would fail once the gate opens); in ``FGSM_MEP_CS.py`` it is the label-smoothed loss at x + δ_prior with its
graph retained, which ``benign: init`` with the MEP attack reproduces value for value (same point, same weights;
only the BatchNorm running statistics see one more batch). Weight centralisation, the paper's other term, is
``weight_centralisation``; it is absent from both official scripts.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..threat import ThreatModel
from .base import LossTerm, StepContext, register_regulariser, wide, zero_loss


BENIGN_POINTS = ("clean", "init")
"""Where ConvergeSmooth takes its benign loss: the clean batch, or the training attack's start point."""


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, target: float) -> torch.Tensor:
    """Per-example CE against the label-smoothed target: ``target`` on the true class, (1 − target)/(C − 1) on each
    other class (the official code's smoothing, 0.6 by default)."""
    logp = F.log_softmax(wide(logits), dim=1)
    c = logp.shape[1]
    true = logp.gather(1, y[:, None]).squeeze(1)
    other = (logp.sum(dim=1) - true) / max(c - 1, 1)
    return -(target * true + (1 - target) * other)


def in_constant_segment(epoch: int, segments: list[int] | None, stride: int) -> bool:
    """Whether 0-based ``epoch`` lies strictly inside a segment [s, e] of ``segments`` (boundaries, e.g. the
    multistep milestones with 0 and the last epoch) with a margin: s + stride < epoch < e − stride. Without
    segments the whole run is one open segment starting at 0."""
    if not segments:
        return epoch > stride
    return any(s + stride < epoch < e - stride for s, e in zip(segments[:-1], segments[1:]))


@register_regulariser
class ConvergeSmooth(LossTerm):
    """Batch-based (default) or example-based ConvergeSmooth on the benign loss.

    Args:
        threat: unused (the constraint is on the benign loss); kept for the common constructor.
        w2: weight of the benign-loss constraint (1.0).
        gamma: γ_max (0.03 on CIFAR-10, 0.06 on CIFAR-100).
        gamma_ratio: γ_max/γ_min (1 in the code, which makes γ_t constant).
        signed_d: use the signed d = u_{t−1} − u_{t−2} (the code) instead of |d| (the paper's formula).
        smooth_target: probability of the true class in the label-smoothed benign CE (0.6).
        segments: epoch boundaries of the constant-lr segments, e.g. [0, 100, 105, 110]; null: one segment.
        stride: margin in epochs at each segment edge (1).
        example_based: gate each example (E-variant) instead of the batch mean (B-variant).
        benign: where the benign loss is taken: ``clean`` (x; the paper and FGSM_MEP_CS.py) or ``init`` (the attack's
            start point x + δ₀; FGSM_RS_CS.py), see the module docstring.

    State (saved with every checkpoint): the epoch means u and this epoch's running sum. Logs ``benign_loss``,
    ``threshold`` (γ_t), ``u_prev`` (NaN before the first epoch ends), ``active`` (inside a segment), ``gate``
    (fraction of the batch, or the batch, outside the band) and ``sign`` (+1 / −1 / 0 for the batch variant).
    """

    name = "convergesmooth"
    behaviour_note = ("its paper/code differences are explicit options: benign: clean | init (the benign point), and "
                      "the separate weight_centralisation regulariser, which the official code lacks")

    def __init__(self, threat: ThreatModel, *, w2: float = 1.0, gamma: float = 0.03, gamma_ratio: float = 1.0,
                 signed_d: bool = False, smooth_target: float = 0.6, segments: list[int] | None = None,
                 stride: int = 1, example_based: bool = False, benign: str = "clean"):
        self.w2, self.gamma_max = float(w2), float(gamma)
        self.gamma_ratio = float(gamma_ratio)
        self.signed_d = bool(signed_d)
        self.smooth_target = float(smooth_target)
        self.segments = None if segments is None else [int(s) for s in segments]
        self.stride = int(stride)
        self.example_based = bool(example_based)
        if benign not in BENIGN_POINTS:
            raise ConfigError(f"convergesmooth: benign must be one of {', '.join(BENIGN_POINTS)} (clean: the paper and "
                              f"FGSM_MEP_CS.py; init: the attack's start point, FGSM_RS_CS.py), got {benign!r}.")
        self.benign = benign
        if self.gamma_ratio < 1 or self.gamma_max < 0 or not 0 < self.smooth_target <= 1:
            raise ConfigError(
                f"convergesmooth: expected gamma >= 0, gamma_ratio >= 1 and 0 < smooth_target <= 1; got gamma="
                f"{self.gamma_max}, gamma_ratio={self.gamma_ratio}, smooth_target={self.smooth_target}."
            )
        if self.segments is not None and (len(self.segments) < 2 or self.segments != sorted(self.segments)):
            raise ConfigError(f"convergesmooth: segments are increasing epoch boundaries such as [0, 100, 105, 110], "
                              f"got {segments!r}.")
        self.means: list[float] = []  # u_0, u_1, ... (one per finished epoch)
        self._sum = 0.0
        self._count = 0

    def threshold(self) -> float:
        """γ_t from the last two epoch means (γ_max until two exist)."""
        if len(self.means) < 2:
            return self.gamma_max
        d = self.means[-1] - self.means[-2]
        d = d if self.signed_d else abs(d)
        return min(max(d, self.gamma_max / self.gamma_ratio), self.gamma_max)

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        active = bool(self.means) and in_constant_segment(ctx.epoch, self.segments, self.stride)
        point = ctx.x if self.benign == "clean" else ctx.result.x_init
        with torch.set_grad_enabled(active and torch.is_grad_enabled()), ctx.autocast():
            logits = ctx.model(point)
        losses = smoothed_ce(logits, ctx.y, self.smooth_target)
        benign = losses.mean()
        gamma = self.threshold()
        u_prev = self.means[-1] if self.means else math.nan
        logs: dict[str, Any] = {"benign_loss": benign.detach(), "threshold": gamma, "u_prev": u_prev,
                                "active": float(active), "gate": 0.0, "sign": 0.0}
        if not active:
            return {"loss": zero_loss(ctx), **logs}
        if self.example_based:
            dev = losses.detach() - u_prev
            gate = dev.abs() > gamma
            term = self.w2 * (gate.float() * dev.sign() * losses).mean()
            logs["gate"] = gate.float().mean().detach()
            return {"loss": term, **logs}
        dev = float(benign.detach()) - u_prev
        if abs(dev) <= gamma:
            return {"loss": zero_loss(ctx), **logs}
        sign = 1.0 if dev > 0 else -1.0
        logs.update(gate=1.0, sign=sign)
        return {"loss": sign * self.w2 * benign, **logs}

    def after_step(self, ctx: StepContext, out: dict[str, Any]) -> None:
        b = ctx.x.shape[0]
        self._sum += float(out["benign_loss"]) * b
        self._count += b

    def on_epoch_end(self, epoch: int, model: torch.nn.Module | None = None) -> None:
        if self._count:
            self.means.append(self._sum / self._count)
        self._sum, self._count = 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"means": list(self.means), "sum": self._sum, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.means = [float(v) for v in state["means"]]
        self._sum, self._count = float(state["sum"]), int(state["count"])
