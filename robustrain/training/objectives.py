"""Training objectives: the main loss on the adversarial input (TRADES and MART will join here)."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from .hooks import StepContext


class CrossEntropy:
    """Cross-entropy on the adversarial input, with optional label smoothing."""

    name = "ce"

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = float(label_smoothing)

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        with ctx.autocast():
            logits = ctx.model(ctx.result.x_adv)
        ctx.logits_adv = logits
        loss = F.cross_entropy(logits.float(), ctx.y, label_smoothing=self.label_smoothing)
        return {"loss": loss}
