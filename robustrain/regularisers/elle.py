"""ELLE and ELLE-A (Abad Rocamora et al., "Efficient local linearity regularization to overcome catastrophic
overfitting", ICLR 2024, arXiv 2401.11618; LIONS-EPFL/ELLE).

Local linearity error on one random triplet per example in the ε-ball, with ℓ = per-example CE:

    x_a = x + ε·u,  x_b = x + ε·u′  (u, u′ ~ U[−1, 1]^d),  a ~ U(0, 1),  x_c = (1 − a)·x_a + a·x_b
    E_lin = (1/B) Σ_i [ℓ(x_c,i) − (1 − a_i)·ℓ(x_a,i) − a_i·ℓ(x_b,i)]²,      term = λ·E_lin

One forward of the 3B concatenation and no double backpropagation; gradients flow through all three losses.

Paper vs code (``behaviour``):
* ``paper`` (default): one optimiser step per batch.
* ``code``: the official loop (LIONS-EPFL/ELLE ``core/utils/train.py``@0f16c0e, ``Trainer.train``) calls
  ``loss.backward()``, ``optimizer.step()``, ``scheduler.step()`` and ``optimizer.step()`` again, with the same
  gradients. The second call is a full second SGD step: at the weights the first step left, with the learning rate
  (and CyclicLR's cycled momentum) of the *next* iteration, weight decay added again (at the updated weights) and the
  momentum buffer updated again. This term asks the Trainer for it through ``optimizer_steps = 2`` (see
  :meth:`robustrain.training.Trainer.train_step`). The official CIFAR training attack also never clips x_adv to
  [0,1]; the code-behaviour recipes pair this with the FGSM option ``clip: false``.
* The triplet points are not clipped to [0,1] (``clip: false``), as in the paper's formula and the official CIFAR
  code; ``clip: true`` clips them to the image box as the official ImageNet code does.
* The triplet radius is the attack's of the step (``ctx.threat``): during an ε warm-up the triplets shrink with the
  attack (the official CIFAR code has no warm-up); λ stays the full ε's.
* The 3B triplet forward is separate from the x_adv forward (the objective's), as in the official code
  (``self.model(torch.cat((x_ab, x_c)))``): BatchNorm in train mode normalises the triplet batch with its own
  statistics and updates the running statistics once more.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import kernels
from ..errors import ConfigError
from ..registry import BEHAVIOURS
from ..threat import ThreatModel
from .base import LossTerm, StepContext, eps_pixels, per_example_ce, register_regulariser, step_threat, wide


def elle_default_lambda(threat: ThreatModel) -> float:
    """The paper's constant λ per ε (official CIFAR-10 scripts): 1000 for ε ≤ 8/255, 5000 up to 20/255,
    10000 above (the scripts cover 22–26/255)."""
    if threat.norm != "linf":
        raise ConfigError("elle: the paper's λ defaults are for L∞; set lam explicitly for an L2 threat model.")
    px = eps_pixels(threat)
    return 1000.0 if px <= 8 else 5000.0 if px <= 20 else 10000.0


class _LinearityError(LossTerm):
    """The shared E_lin computation and the paper/code behaviour switch."""

    behaviours = BEHAVIOURS
    """``paper``: one optimiser step per batch; ``code``: two, as the official training loop (module docstring)."""
    signals = {"e_lin": "error"}  # the overfitting monitor reads E_lin (hooks.LossTerm.signals)

    def __init__(self, threat: ThreatModel, *, clip: bool = False, behaviour: str = "paper"):
        if behaviour not in BEHAVIOURS:
            raise ConfigError(
                f"{self.name}: behaviour must be one of {', '.join(BEHAVIOURS)} (paper: one optimiser step per batch; "
                f"code: two, as the official ELLE loop), got {behaviour!r}."
            )
        self.threat = threat
        self.clip = bool(clip)
        self.behaviour = behaviour

    @property
    def optimizer_steps(self) -> int:  # type: ignore[override]
        return 2 if self.behaviour == "code" else 1

    def linearity_error(self, ctx: StepContext) -> torch.Tensor:
        """E_lin of the batch (scalar, fp32, with the graph to the weights)."""
        b = ctx.x.shape[0]
        threat = step_threat(ctx, self.threat)  # the attack's radius (scaled during the ε warm-up)
        x_a, x_b, x_c, a = kernels.elle_triplets(threat, ctx.x, ctx.generator, clip=self.clip)
        a = a.to(wide(ctx.x).dtype)
        with ctx.autocast():
            logits = ctx.model(torch.cat([x_a, x_b, x_c]))
        loss_a, loss_b, loss_c = per_example_ce(logits, ctx.y.repeat(3)).split(b)
        return (loss_c - (1 - a) * loss_a - a * loss_b).square().mean()


@register_regulariser
class ELLE(_LinearityError):
    """ELLE with a constant weight: ``λ·E_lin``.

    Args:
        threat: the threat model (ε sets the default λ, and the triplet radius when the step context carries no
            threat model; the Trainer's carries the attack's).
        lam: λ; default per ε from the paper (1000 for ε ≤ 8/255, 5000 for 10–20/255, 10000 for 22–26/255).
        clip: clip the triplet points to [0,1] (off in the paper and the official CIFAR code).
        behaviour: ``paper`` (one optimiser step per batch) or ``code`` (two, as the official loop).

    Logs ``error`` (E_lin) and ``lam`` every step.
    """

    name = "elle"

    def __init__(self, threat: ThreatModel, *, lam: float | None = None, clip: bool = False,
                 behaviour: str = "paper"):
        super().__init__(threat, clip=clip, behaviour=behaviour)
        self.lam = float(elle_default_lambda(threat) if lam is None else lam)
        if self.lam < 0:
            raise ConfigError(f"elle: lam must be >= 0, got {self.lam}.")

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        err = self.linearity_error(ctx)
        return {"loss": self.lam * err, "error": err.detach(), "lam": self.lam}


@register_regulariser
class ELLEA(_LinearityError):
    """ELLE-A: ELLE with the adaptive λ of the official CIFAR code (``--lambda_schedule onoff``).

    λ starts at 0. After each optimiser step, with e_t this batch's E_lin and H all earlier values:

        λ ← λ_max  if |H| > 2 and e_t > mean(H) + s·std(H)   (population std)
        λ ← decay·λ otherwise;   then H ← H + [e_t]

    so the new λ is used from the next step; E_lin is computed every step, also while λ ≈ 0. H is never
    reset (the ImageNet code's 500-value window is ``window: 500``).

    Args:
        threat: the threat model.
        lam_max: λ after a detected spike (4000 for every ε in the paper's CIFAR scripts).
        decay: multiplicative decay of λ per step (0.99).
        sensitivity: s, in standard deviations (2).
        window: use only the last ``window`` values of H (None: all, as on CIFAR).
        clip: clip the triplet points to [0,1].
        behaviour: ``paper`` (one optimiser step per batch) or ``code`` (two, as the official loop; λ is still
            updated once per batch).

    State (saved with every checkpoint): λ and H. Logs ``error``, ``lam`` (the λ of this step) and
    ``triggered`` (1.0 when this step's λ is λ_max because the previous step's E_lin was a spike).
    """

    name = "elle_a"

    def __init__(self, threat: ThreatModel, *, lam_max: float = 4000.0, decay: float = 0.99,
                 sensitivity: float = 2.0, window: int | None = None, clip: bool = False,
                 behaviour: str = "paper"):
        super().__init__(threat, clip=clip, behaviour=behaviour)
        self.lam_max = float(lam_max)
        self.decay = float(decay)
        self.sensitivity = float(sensitivity)
        self.window = None if window is None else int(window)
        if self.lam_max < 0 or not 0 <= self.decay <= 1 or (self.window is not None and self.window < 3):
            raise ConfigError(
                f"elle_a: expected lam_max >= 0, 0 <= decay <= 1 and window >= 3 (or null); got lam_max="
                f"{self.lam_max}, decay={self.decay}, window={self.window}."
            )
        self.lam = 0.0
        self.history: list[float] = []
        self._last_trigger = 0.0

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        err = self.linearity_error(ctx)
        return {"loss": self.lam * err, "error": err.detach(), "lam": self.lam, "triggered": self._last_trigger}

    def spike(self, error: float) -> bool:
        """Whether ``error`` exceeds mean + s·std of the history (needs more than two earlier values)."""
        h = self.history if self.window is None else self.history[-self.window:]
        if len(h) <= 2:
            return False
        arr = np.asarray(h, dtype=np.float64)
        return bool(error > arr.mean() + self.sensitivity * arr.std())

    def after_step(self, ctx: StepContext, out: dict[str, Any]) -> None:
        self.update(float(out["error"]))

    def update(self, error: float) -> None:
        """The λ rule for one measured E_lin (then appended to the history)."""
        triggered = self.spike(error)
        self.lam = self.lam_max if triggered else self.decay * self.lam
        self._last_trigger = float(triggered)
        self.history.append(float(error))

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam, "history": list(self.history), "last_trigger": self._last_trigger}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = float(state["lam"])
        self.history = [float(v) for v in state["history"]]
        self._last_trigger = float(state.get("last_trigger", 0.0))
