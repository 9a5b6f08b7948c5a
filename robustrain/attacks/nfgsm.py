"""N-FGSM (de Jorge et al., NeurIPS 2022, arXiv 2202.01181): stronger noise, no projection.

δ₀ ~ U(ball of radius kε) ∩ box with k = 2 by default, step α = ε, and *no* projection back onto the
ε-ball (only the box clip), so the training point can lie up to (k+1)ε from x.
"""
from __future__ import annotations

from .base import register_attack
from .fgsm import FGSM


@register_attack
class NFGSM(FGSM):
    """FGSM from noise of radius kε (default k=2) with step ε and no projection."""

    name = "nfgsm"
    default_step_ratio = 1.0
    default_init_scale = 2.0
    default_project = False
