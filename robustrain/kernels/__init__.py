"""The attack-step operations (L∞ / L2 step, random start, keep-best, ELLE triplets): a PyTorch reference
(``reference.py``, the specification), fused Triton kernels (``triton_kernels.py``, imported lazily) and the
dispatcher that picks one (``dispatch.py``; argument ``backend`` or ``$ROBUSTRAIN_KERNELS``)."""
from __future__ import annotations

from .dispatch import (BACKENDS, ENV_VAR, ascent_step, choose, elle_triplets, fused_problem, keep_best_update,
                       l2_step, linf_step, pgd_start, random_start, requested_backend)

__all__ = [
    "BACKENDS", "ENV_VAR", "ascent_step", "choose", "elle_triplets", "fused_problem", "keep_best_update", "l2_step",
    "linf_step", "pgd_start", "random_start", "requested_backend",
]
