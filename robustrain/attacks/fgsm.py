"""FGSM (Goodfellow et al. 2015): one signed-gradient step from the clean point.

The single-step family (FGSM, FGSM-RS, N-FGSM) differs only in the start point, the step size and
whether the result is projected back onto the ε-ball; :class:`FGSM` holds that one step and the two
presets in ``fgsm_rs.py`` and ``nfgsm.py`` set its options.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import kernels
from ..errors import ConfigError
from ..threat import ThreatModel
from .base import Attack, AttackResult, ratio_rule, register_attack, smoothed_loss


@register_attack
class FGSM(Attack):
    """One ascent step ``δ = δ₀ + α·dir(∇_δ ℓ(x+δ₀))``, then optional projection and the box clip.

    ``clip: false`` LEAVES THE [0,1] BOX: neither the random start nor the result is clipped to the image box, so
    ``x_adv`` (and ``x_init``) may hold values below 0 or above 1. That is what the official ELLE training loop does
    (LIONS-EPFL/ELLE core/utils/train.py@0f16c0e, ``Trainer.loss``: ``x_adv = x + r·ε·(2·rand − 1)``, then
    ``x_adv + step·sign(∇)``, projected onto the ε-ball only with ``--clamp``, never clipped to [0,1]); it exists
    for the recipes that reproduce that code (``configs/cifar10_*elle*_code*.yaml``) and is refused for validation
    and evaluation attacks (config check), whose points must lie in the threat model. ``max_norm`` still bounds
    ‖δ‖ (ε with projection, init_scale·ε + step without); ``in_box`` is False.

    Args:
        threat: the threat model (L∞ or L2 ball ∩ [0,1] box).
        step: step size α in input units; default ``step_ratio · ε``.
        init_scale: radius of the uniform random start in units of ε (0 = start at the clean point,
            1 = FGSM-RS, k = N-FGSM).
        project: project onto the ε-ball after the step (N-FGSM does not).
        clip: clip the random start and the result to the [0,1] box (default true; false leaves the box, see above).
        clip_init: clip the random start to the box before the gradient is taken (default: as ``clip``).
            ``clip_init: false`` with ``clip: true`` is Wong et al.'s MNIST FGSM (locuslab/fast_adversarial
            MNIST/train_mnist.py@54f7287: ``delta.uniform_(-ε, ε)``, gradient at ``X + delta`` unclipped, then
            ``clamp(delta + α·sign(g), -ε, ε)`` and the box clip): the gradient is taken at a point that may lie
            outside [0,1] (``x_init`` too), the result is in the box. Their CIFAR-10 script clips the start first.
        label_smoothing: the attack ascends cross-entropy with this label smoothing (torch's convention); 0 (the
            default) = plain CE. fzjcdt/FastAT_Benchmark's single-step methods (fast_at/n_fgsm.py@b99c0de) take the
            attack's gradient of their training criterion, ``CrossEntropyLoss(label_smoothing=0.4)``: the recipes
            that follow that code set 0.4 here (``configs/cifar10_nfgsm_wa.yaml``).
        **kwargs: ``loss_fn``, ``bn_mode``, ``amp_dtype``, ``compile`` of :class:`Attack`. ``loss_fn`` replaces the
            label-smoothed CE.
    """

    name = "fgsm"
    scaled_fields = ("step",)  # init_scale is in units of ε: it follows the radius by itself
    default_step_ratio = 1.0
    default_init_scale = 0.0
    default_project = True

    def __init__(
        self,
        threat: ThreatModel,
        *,
        step: float | None = None,
        init_scale: float | None = None,
        project: bool | None = None,
        clip: bool = True,
        clip_init: bool | None = None,
        label_smoothing: float = 0.0,
        **kwargs,
    ):
        self.label_smoothing = smoothed_loss(self.name, label_smoothing, kwargs)
        super().__init__(threat, **kwargs)
        self.clip_init = bool(clip) if clip_init is None else bool(clip_init)
        if self.clip_init and not clip:
            raise ConfigError(f"{self.name}: clip_init: true with clip: false is not an attack of any official code; "
                              "clip: false leaves the box everywhere (ELLE), clip_init: false only at the start (Wong MNIST).")
        self.step = float(self.default_step_ratio * threat.eps if step is None else step)
        self._record_step(step, ratio_rule(self.default_step_ratio))
        self.init_scale = float(self.default_init_scale if init_scale is None else init_scale)
        self.project = self.default_project if project is None else bool(project)
        self.clip = bool(clip)
        if self.step < 0 or self.init_scale < 0:
            raise ConfigError(
                f"{self.name}: step and init_scale must be >= 0, got step={self.step}, "
                f"init_scale={self.init_scale}."
            )

    @property
    def in_box(self) -> bool:
        """Whether every returned point lies in the [0,1] box (False with ``clip: false``)."""
        return self.clip

    @property
    def max_norm(self) -> float:
        if self.project:
            return self.threat.eps
        return self.init_scale * self.threat.eps + self.step

    def _procedure(self) -> dict:
        if self.init_scale <= 0:
            start = "the clean point"
        else:
            start = (f"uniform in the {ratio_rule(self.init_scale)} ball, "
                     + ("clipped to the box" if self.clip_init else "not clipped to the box"))
        box = "start and result" if self.clip_init else "result only" if self.clip else "none (leaves the box)"
        return {"steps": 1, "restarts": 1, "start": start, "projection": "ε-ball" if self.project else "none",
                "box_clip": box}

    def _options(self) -> dict:
        return {"init_scale": self.init_scale, "project": self.project, "clip": self.clip,
                "clip_init": self.clip_init, "label_smoothing": self.label_smoothing}

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> AttackResult:
        if self.init_scale <= 0:
            delta0 = torch.zeros_like(x, dtype=torch.float32)
        elif self.clip_init:
            delta0 = kernels.random_start(self.threat, x, generator, scale=self.init_scale)
        else:  # uniform in the ball, not clipped to the box (the PyTorch draw, also on CUDA)
            delta0 = self.threat.sample_ball(x, self.init_scale * self.threat.eps, generator)
        grad, logits0, loss0 = self.input_gradient(model, x, delta0, y)
        if self.clip:
            delta = kernels.ascent_step(self.threat, delta0, grad, x, self.step, project=self.project)
        else:
            delta = delta0 + self.step * self.threat.ascent_direction(grad)
            if self.project:
                delta = self.threat.project(delta)
        return AttackResult(
            x_adv=(x + delta).to(x.dtype),
            delta=delta,
            x_init=(x + delta0).to(x.dtype),
            logits_init=logits0,
            loss_init=loss0,
            grad_init=grad,
        )
