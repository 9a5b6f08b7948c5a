"""EMA weight averaging: an exponential moving average of the weights, evaluated instead of the training weights.

Recipe: ``procedures: [{name: ema, decay: 0.9995}]`` (options below). After optimiser step ``n`` (counted from 1,
one per batch) with ``n % every == 0`` the average θ̄ moves towards the training weights θ:

    θ̄ ← d(n)·θ̄ + (1 − d(n))·θ,    d(n) = 0                              for n ≤ warmup_steps (θ̄ is set to θ)
                                  d(n) = decay                          otherwise, or with ``ramp: true``
                                  d(n) = min(decay, k / (k + 9)),  k = n − warmup_steps   (1/10, 2/11, 3/12, ...)

θ̄ starts at the initial weights θ₀. BatchNorm buffers (``buffers``): ``average`` (default) averages the running
mean / variance with the same d(n) (torch's ``AveragedModel(use_buffers=True)``, FastAT_Benchmark); ``copy`` gives
the average the training model's running statistics (at every update and at each epoch end). Integer buffers
(``num_batches_tracked``) are always copied. ``use_for`` (default ``[validation, final]``): the averaged weights are
what the held-out validation measures (so ``best.pt`` is the epoch whose *average* validates best) and what every
checkpoint stores as ``eval_model`` for the final test evaluation and ``robustrain eval``; the training weights stay
in ``model`` and training continues from them. The overfitting monitor watches the training weights.

The common adversarial-training codes, read (never copied):

* fzjcdt/FastAT_Benchmark ``fast_at/n_fgsm.py`` (and every method file there) @b99c0de, ``tau: 0.9995`` in
  ``configs/cifar10/*.yaml``: after every optimiser step ``exp_avg[k] = (1 − τ)·value + τ·exp_avg[k]`` over the
  whole ``state_dict`` (parameters *and* BatchNorm buffers; ``num_batches_tracked`` too, which becomes a float there
  and is truncated on loading), no warm-up of the decay. Its dictionary aliases the live model until the first
  update, so the first update copies θ₁: here ``warmup_steps: 1``, ``buffers: average``. Validation there measures
  both the model and its average and saves the better of the two as ``best.pth`` (here: ``use_for`` picks one).
* imrahulr/adversarial_robustness_pytorch ``gowal21uncovering/utils/watrain.py`` @6df6a8f (the PyTorch version of
  Gowal et al. 2020 / Rebuffi et al. 2021): every step with ``global_step`` counted from 1, decay 0 while
  ``global_step < W`` with ``W = 0.025·epochs·steps_per_epoch``, then ``min(τ, (1 + δ)/(10 + δ))``, ``δ = step − W``
  (τ = ``--tau``, default 0.995; 0.999 in the papers); parameters only, the BatchNorm buffers are *shared* with the
  training model after each epoch (``update_bn``). That is ``ramp: true, warmup_steps: W − 1, buffers: copy`` here
  (for an integer W ≥ 1).

Parity: ``tests/parity/case_nfgsm_wa.py`` and ``case_pgd_at_wa.py`` run ``configs/cifar10_{nfgsm,pgd_at}_wa.yaml``
beside a transcription of the FastAT_Benchmark loop and its ``exp_avg`` update (``tests/parity/fastat.py``;
``results/parity/official_recipes.md``): the averaged weights and BatchNorm statistics agree to rounding; the one
difference, by design, is ``num_batches_tracked`` (copied here).
"""
from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from . import register_procedure
from ._averaging import WeightAveraging


@register_procedure
class EMA(WeightAveraging):
    """Exponential moving average of the weights (see the module docstring for the update and the options)."""

    name = "ema"

    def __init__(self, *, decay: float = 0.999, every: int = 1, warmup_steps: int = 0, ramp: bool = False,
                 buffers: str = "average", use_for: Any = ("validation", "final")):
        super().__init__(buffers=buffers, use_for=use_for)
        self.decay = float(decay)
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"ema.decay must lie in [0, 1) (e.g. 0.999: the average of about the last 1,000 "
                              f"updates), got {decay!r}.")
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ConfigError(f"ema.every must be a whole number of optimiser steps >= 1, got {every!r}.")
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ConfigError(f"ema.warmup_steps must be a whole number >= 0, got {warmup_steps!r}.")
        if not isinstance(ramp, bool):
            raise ConfigError(f"ema.ramp must be true or false, got {ramp!r}.")
        self.every, self.warmup_steps, self.ramp = int(every), int(warmup_steps), ramp

    def decay_at(self, n: int) -> float:
        """d(n) for optimiser step ``n`` (counted from 1)."""
        if n <= self.warmup_steps:
            return 0.0
        if not self.ramp:
            return self.decay
        k = n - self.warmup_steps
        return min(self.decay, k / (k + 9.0))

    def after_step(self, model, optimizer, ctx):
        n = ctx.step + 1
        if n % self.every == 0:
            self.fold_in(model, self.decay_at(n))

    def on_epoch_end(self, model, optimizer, epoch):
        if self.buffers == "copy":
            self.copy_buffers(model)
