"""SWA weight averaging (Izmailov et al., UAI 2018): the plain mean of the weights from a start epoch on, evaluated
instead of the training weights.

Recipe: ``procedures: [{name: swa, start_epoch: 150}]``. From epoch ``start_epoch`` (0-based; earlier epochs are
not averaged) the weights θ are folded into the mean θ̄ at the end of every epoch (``every: 0``, the SWA paper's
"once per epoch" with a constant or cyclic lr) or after every ``every``-th optimiser step:

    θ̄ ← (m·θ̄ + θ) / (m + 1),   m = models averaged so far (the first fold copies θ)

— ``torch.optim.swa_utils.AveragedModel``'s default ``avg_fn``. Until the first fold, validation and checkpoints
use the training weights; from then on, the average (``use_for``, default ``[validation, final]``: validation,
the choice of ``best.pt``, and the ``eval_model`` of every checkpoint for the final test and ``robustrain eval``).

BatchNorm (``buffers``): the average of the weights has no running statistics of its own. ``recompute`` (default)
recomputes them at each epoch end, before validation, as SWA does (``torch.optim.swa_utils.update_bn``: the running
statistics reset and re-estimated as a plain mean over forwards in train mode), over the last ``bn_batches``
training batches of the epoch: with ``bn_inputs: adversarial`` (default) their adversarial examples, the inputs the
training forward normalised (adversarial training's BatchNorm statistics are those of attacked inputs); with
``clean`` the clean images, as ``update_bn`` on the training loader. Those batches are kept on the device (and in a
mid-epoch checkpoint, so a resume recomputes exactly the same statistics: about ``bn_batches`` × 1.5 MB for
CIFAR-10 at batch 128). ``average`` averages the running statistics like the weights; ``copy`` takes the training
model's.

Chen et al. (ICLR 2021, "Robust overfitting may be mitigated by properly learned smoothening") average from the
first lr decay on; SWA's own CIFAR recipe starts at 75 % of the epochs.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ...errors import ConfigError
from . import register_procedure
from ._averaging import WeightAveraging, check_choice, recompute_bn

BN_INPUTS = ("adversarial", "clean")


@register_procedure
class SWA(WeightAveraging):
    """Stochastic weight averaging (see the module docstring for the update and the options)."""

    name = "swa"
    buffer_modes = ("recompute", "average", "copy")

    def __init__(self, *, start_epoch: int = 0, every: int = 0, buffers: str = "recompute", bn_batches: int = 20,
                 bn_inputs: str = "adversarial", use_for: Any = ("validation", "final")):
        super().__init__(buffers=buffers, use_for=use_for)
        for key, value, low in (("start_epoch", start_epoch, 0), ("every", every, 0), ("bn_batches", bn_batches, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < low:
                raise ConfigError(f"swa.{key} must be a whole number >= {low}, got {value!r}.")
        self.start_epoch, self.every, self.bn_batches = int(start_epoch), int(every), int(bn_batches)
        self.bn_inputs = check_choice("swa.bn_inputs", bn_inputs, BN_INPUTS)
        self.recent: list[Tensor] = []  # the inputs of the epoch's last bn_batches batches (buffers: recompute)

    def after_step(self, model, optimizer, ctx):
        if ctx.epoch < self.start_epoch:
            return
        if self.buffers == "recompute":
            x = ctx.result.x_adv if self.bn_inputs == "adversarial" else ctx.x
            self.recent.append(x.detach().clone())
            del self.recent[:-self.bn_batches]
        if self.every and (ctx.step + 1) % self.every == 0:
            self.fold_in(model, self.n_averaged / (self.n_averaged + 1.0))

    def on_epoch_end(self, model, optimizer, epoch):
        if epoch < self.start_epoch:
            return
        if not self.every:
            self.fold_in(model, self.n_averaged / (self.n_averaged + 1.0))
        if self.n_averaged and self.buffers == "copy":
            self.copy_buffers(model)
        elif self.n_averaged and self.buffers == "recompute":
            recompute_bn(self.ensure(model), self.recent)
        self.recent = []

    def _extra_state(self) -> dict[str, Any]:
        return {"recent": [x.clone() for x in self.recent]}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.recent = [x.clone() for x in state.get("recent", [])]
