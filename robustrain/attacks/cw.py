"""CW: PGD on the Carlini–Wagner margin loss (Carlini & Wagner, S&P 2017, arXiv 1608.04644, loss f6), inside the
threat model.

The fixed-radius form that adversarial-training papers report as "CW∞" / "CW-k" (e.g. Wong et al. 2020, de Jorge et
al. 2022): PGD steps up the margin min(max_{j≠y} z_j − z_y, κ) (C&W's f6 = max(z_y − max_{j≠y} z_j, −κ), negated)
instead of the cross-entropy, projected onto the ε-ball ∩ box,
with PGD's random start, restarts and per-example keep-best. The margin ignores the softmax's saturation, so it
still finds a direction where the cross-entropy's gradient vanishes. (The original C&W attack minimises the L2 norm
of the perturbation with no radius: ``torchattacks.CW``; its results are comparable only after filtering by ε.)
"""
from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from ..threat import ThreatModel
from .base import register_attack
from .pgd import PGD


def cw_margin(kappa: float = 0.0):
    """The per-example C&W margin min(max_{j≠y} z_j − z_y, κ) (fp32) to ascend, as a :data:`LossFn`: positive once
    the point is misclassified, no further gain past a margin of κ."""

    def cw_margin_loss(logits: Tensor, y: Tensor) -> Tensor:
        z = logits.float()
        true = z.gather(1, y[:, None]).squeeze(1)
        other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return (other - true).clamp_max(kappa)

    return cw_margin_loss


@register_attack
class CW(PGD):
    """PGD on the C&W margin loss (``kappa`` = κ ≥ 0: stop pushing once the margin reaches κ); the step, steps,
    restarts and keep-best are PGD's (defaults for evaluation: 30 steps, 1 restart, step ε/4).

    Example::

        >>> cw = build_attack("cw", make_threat("linf", 8 / 255), steps=30)
        >>> x_adv = cw(model, x, y).x_adv          # x: (B, C, H, W) in [0,1]; x_adv the same shape, inside ε and [0,1]
    """

    name = "cw"

    def __init__(self, threat: ThreatModel, *, steps: int = 30, kappa: float = 0.0, **kwargs):
        if "loss_fn" in kwargs:
            raise ConfigError("cw: the loss is the C&W margin; use pgd with loss_fn for another loss.")
        if float(kappa) < 0:
            raise ConfigError(f"cw: kappa must be >= 0, got {kappa}.")
        super().__init__(threat, steps=steps, loss_fn=cw_margin(float(kappa)), **kwargs)
        self.kappa = float(kappa)

    @property
    def label(self) -> str:
        return f"cw-{self.steps}-{self.restarts}"

    def loss_name(self) -> str:
        return f"C&W margin, kappa {self.kappa:g}"

    def _options(self) -> dict:
        return {**super()._options(), "kappa": self.kappa}
