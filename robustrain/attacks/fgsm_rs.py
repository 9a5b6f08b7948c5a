"""FGSM-RS (Wong, Rice & Kolter, ICLR 2020, arXiv 2001.03994): FGSM from a uniform random start.

δ₀ ~ U(ball of radius ε) ∩ box, step α = 1.25ε, projection onto the ε-ball, box clip.
"""
from __future__ import annotations

from .base import register_attack
from .fgsm import FGSM


@register_attack
class FGSMRS(FGSM):
    """FGSM with a random start of radius ε, step 1.25ε and projection (the "fast is better than free" step)."""

    name = "fgsm_rs"
    default_step_ratio = 1.25
    default_init_scale = 1.0
    default_project = True
