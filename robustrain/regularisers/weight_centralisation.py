"""Weight centralisation (Zhao et al., "Fast adversarial training with smooth convergence", ICCV 2023), built
from the paper's formula; the official code (FAT-CS/ConvergeSmooth @ d94f6bc) does not implement it.

    term = w3·‖θ_t − (1/|φ|) Σ_{j∈φ} θ_j‖₂      (w3 = 0.1)

θ is every trainable parameter of the model, flattened into one vector (the norm is not squared, so the
gradient w3·(θ − θ̄)/‖θ − θ̄‖ has length w3). The history φ is one snapshot per finished epoch: the weights at
the end of epochs 1, 2, ..., t−1 (the initial weights are not included), kept as a running mean θ̄ in fp32
tensors, so memory is one copy of the parameters and a resumed run continues exactly. The snapshot is taken
in ``on_epoch_end`` (after the epoch's last optimiser step, outside any weight perturbation). During the first
epoch φ is empty and the term is 0.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..threat import ThreatModel
from .base import LossTerm, StepContext, register_regulariser, zero_loss


@register_regulariser
class WeightCentralisation(LossTerm):
    """``w3·‖θ − mean of the per-epoch weight snapshots‖₂``.

    Args:
        threat: unused; kept for the common constructor.
        w3: weight of the term (0.1 in the paper).

    State (saved with every checkpoint): the running mean of the snapshots and their number. Logs ``distance``
    (‖θ − θ̄‖₂) and ``snapshots`` (|φ|).
    """

    name = "weight_centralisation"

    def __init__(self, threat: ThreatModel, *, w3: float = 0.1):
        self.w3 = float(w3)
        if self.w3 < 0:
            raise ConfigError(f"weight_centralisation: w3 must be >= 0, got {self.w3}.")
        self.mean: list[torch.Tensor] = []
        self.count = 0
        self._model: torch.nn.Module | None = None  # the trained model, seen in after_step; not state

    @staticmethod
    def parameters(model: torch.nn.Module) -> list[torch.Tensor]:
        return [p for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def snapshot(self, params: list[torch.Tensor]) -> None:
        """Add the current weights to the running mean θ̄ (θ̄ ← θ̄ + (θ − θ̄)/n)."""
        if not self.mean:
            self.mean = [p.detach().float().clone() for p in params]
            self.count = 1
            return
        if len(self.mean) != len(params) or any(m.shape != p.shape for m, p in zip(self.mean, params)):
            raise ConfigError("weight_centralisation: the model's parameters changed shape since the last snapshot.")
        self.count += 1
        for m, p in zip(self.mean, params):
            m.add_((p.detach().float() - m) / self.count)

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        params = self.parameters(ctx.model)
        if not self.mean:
            return {"loss": zero_loss(ctx), "distance": 0.0, "snapshots": 0.0}
        sq = sum((p - m.to(p.dtype)).square().sum() for p, m in zip(params, self.mean))
        dist = sq.clamp_min(1e-24).sqrt()  # zero gradient (not NaN) when θ = θ̄
        return {"loss": self.w3 * dist, "distance": dist.detach(), "snapshots": float(self.count)}

    def after_step(self, ctx: StepContext, out: dict[str, Any]) -> None:
        self._model = ctx.model

    def on_epoch_end(self, epoch: int, model: torch.nn.Module | None = None) -> None:
        model = model if model is not None else self._model  # the Trainer passes the model; else the one trained
        if model is not None:
            self.snapshot(self.parameters(model))

    def state_dict(self) -> dict[str, Any]:
        return {"mean": [m.clone() for m in self.mean], "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = [m.detach().float().clone() for m in state["mean"]]
        self.count = int(state["count"])
