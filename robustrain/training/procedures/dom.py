"""DOM — Distraction Over-Memorization (Lin, Yu, Han & Liu, "On the Over-Memorization During Natural, Robust and
Catastrophic Overfitting", ICLR 2024, arXiv 2310.08847; official code tmllab/2024_ICLR_DOM DOM.py@9b4cadb).

The paper's claim: natural, robust and catastrophic overfitting share one behaviour, *over-memorisation*: the
network suddenly becomes highly confident on some training patterns and keeps them memorised; an over-memorised
adversarial pattern comes with a high-confidence (low-loss) natural pattern. DOM therefore looks only at the
natural (clean) loss ``ℓ_nat(x) = CE(f(x), y)`` of each training example and, after a warm-up, either removes the
low-loss ones from the training loss (DOM_RE) or augments them until they are not low-loss any more (DOM_DA).

What the official loop does, per batch (read from DOM.py@9b4cadb; this procedure does the same):

1. ``ℓ_nat`` = per-example CE of a forward on the clean batch, on **every** batch (before the warm-up too), on
   the model in whatever mode it is in: train mode (its forward updates the BatchNorm running statistics), except
   on the first batch of every epoch after the first, where the end-of-epoch evaluation left the model in eval
   mode (so that forward, the augmentation forwards and the attack of that batch run in eval mode;
   ``model.train()`` comes only before the training forward). Options ``bn_mode`` / ``update_bn_stats`` /
   ``first_batch_bn_mode`` (the attack has its own ``first_batch_bn_mode``).
2. DOM acts once the training progress ``t = epoch + (i+1)/n`` (``i`` the batch index, ``n`` the batches per
   epoch: the position at the *end* of the batch) reaches ``start · epochs`` (the code: ``t >= epochs/2``, so
   ``start: 0.5``; the last batch of epoch ``E/2 − 1`` already has ``t = E/2``).
3. DOM_RE (``operate: remove``, the code's ``--operate RE``): the per-example robust loss is multiplied by
   ``1[ℓ_nat ≥ τ]`` and averaged over the **whole** batch (removed examples count in the denominator): a weight
   (``Procedure.weights``) of 0 or 1.
4. DOM_DA (``operate: augment``, ``--operate DA_AUG`` / ``DA_Rand``): the examples with ``ℓ_nat ≤ τ`` are pending.
   For ``it = 1 .. k`` (``iterations``, ``--max-arg-iteration``): ``a`` = the augmentation (torchvision AugMix or
   RandAugment with default settings, on the images converted to uint8 and back, one call on the pending
   sub-batch so the sampled operations are shared by it) of the pending examples' *current* inputs, clipped to
   [0, 1]; ``ℓ(a)`` its natural loss (a forward as in 1); if ``it = k`` every pending input becomes ``a``;
   otherwise each becomes the blend ``x·(1 − s) + a·s`` (``strength`` s, ``--arg-strength``), except those with
   ``ℓ(a) ≥ τ``, which become ``a``; those leave the pending set; stop when none is left. So after the loop every
   initially pending example holds either a full augmentation (the first one that reached τ, or the last one)
   — the blends only feed the next iteration. The attack then runs on the new inputs (``Procedure.augment``) and
   the robust loss is the plain mean (no removal).

Official settings (README; PreActResNet-18, CIFAR-10, batch 128, SGD momentum 0.9, weight decay 5e-4, ε 8/255):
PGD-AT 200 epochs, lr 0.1 piecewise (÷10 after t > E/2, ÷100 after t > 3E/4), PGD-10 α 2/255, τ = 1.5, DA_AUG
k = 2 s = 0.5, DA_Rand k = 2 s = 0.0; FGSM-AT (FGSM-RS α 10/255) 100 epochs, lr 0.2 triangular peaking at t = E/2,
τ = 2.0, DA_AUG k = 5 s = 0.5, DA_Rand k = 3 s = 0.1; natural training 300 epochs τ = 0.2 (not a robustrain recipe:
robustrain trains with an attack). Test PGD-20 every epoch, the best epoch kept.

Paper and code: the paper's text was not available to check every detail here; the control flow above is the
code's, and it is what this procedure does (recipes say ``behaviour: code``). Where the randomness differs: the
official augmentations draw from torch's global generator; here each augmentation call draws a seed from the
trainer's generator and runs torchvision's transform under a forked global generator seeded with it, so a run is
reproducible and resumes exactly.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attacks import attack_guard
from ...errors import ConfigError
from ...registry import choice
from ..hooks import Procedure, StepContext
from . import register_procedure

OPERATIONS = ("remove", "augment")
AUGMENTATIONS = ("augmix", "randaugment")
BN_MODES = ("train", "eval")


def removal_weights(natural_loss: Tensor, threshold: float) -> Tensor:
    """DOM_RE's per-example weights: 1 where the natural loss is at least ``threshold``, else 0."""
    return (natural_loss >= threshold).to(natural_loss.dtype)


def distract(x: Tensor, y: Tensor, pending: Tensor, *, loss_of: Callable[[Tensor, Tensor], Tensor],
             transform: Callable[[Tensor], Tensor], threshold: float, iterations: int, strength: float) -> Tensor:
    """DOM_DA's iterative augmentation of the ``pending`` examples (a boolean mask) of the batch ``x``.

    ``transform`` augments a sub-batch, ``loss_of(inputs, labels)`` gives per-example natural losses. Returns new
    inputs (``x`` itself is not changed); see the module docstring for the control flow."""
    x, pending = x.clone(), pending.clone()
    for it in range(1, iterations + 1):
        idx = pending.nonzero().flatten()
        augmented = transform(x[idx]).clamp(0.0, 1.0)
        reached = loss_of(augmented, y[idx]) >= threshold
        if it == iterations:
            x[idx] = augmented
        else:
            blend = x[idx] * (1 - strength) + augmented * strength
            x[idx] = torch.where(reached.view(-1, *[1] * (x.dim() - 1)), augmented, blend)
        pending[idx[reached]] = False
        if not pending.any():
            break
    return x


def _choice(value: object, choices: tuple[str, ...], where: str, hint: str) -> str:
    return str(choice("", value, choices, f"dom.{where}", hint))


@register_procedure
class DOM(Procedure):
    """Distraction Over-Memorization (see the module docstring for the official control flow).

    Options: ``operate`` remove (DOM_RE) | augment (DOM_DA); ``threshold`` τ on the natural CE (official: 1.5
    PGD-AT, 2.0 FGSM-AT, 0.2 natural training); ``start`` the fraction of the training after which DOM acts (0.5);
    for augment only: ``iterations`` k ≥ 1, ``strength`` s in [0, 1], ``augmentation`` augmix | randaugment
    (defaults: the PGD-AT DA_AUG setting, 2, 0.5, augmix); the BatchNorm mode of DOM's own forwards: ``bn_mode``
    train | eval, ``update_bn_stats`` (train mode only; the code: train mode, updating), ``first_batch_bn_mode``
    (the mode on the first batch of each epoch after the first; the code: eval; None: ``bn_mode``).
    """

    name = "dom"

    def __init__(self, *, operate: str = "remove", threshold: float = 1.5, start: float = 0.5,
                 iterations: int | None = None, strength: float | None = None, augmentation: str | None = None,
                 bn_mode: str = "train", update_bn_stats: bool = True, first_batch_bn_mode: str | None = None):
        self.operate = _choice(operate, OPERATIONS, "operate", "remove is DOM_RE, augment is DOM_DA.")
        self.threshold = float(threshold)
        if not 0.0 <= self.threshold < float("inf"):
            raise ConfigError(f"dom: threshold is a natural cross-entropy τ >= 0 (1.5 for PGD-AT, 2.0 for FGSM-AT in "
                              f"the official README); got {threshold}.")
        self.start = float(start)
        if not 0.0 <= self.start <= 1.0:
            raise ConfigError(f"dom: start is the fraction of the training after which DOM acts, in [0, 1] (0.5 in "
                              f"the official code); got {start}.")
        augment_only = {"iterations": iterations, "strength": strength, "augmentation": augmentation}
        if self.operate == "remove":
            given = [k for k, v in augment_only.items() if v is not None]
            if given:
                raise ConfigError(f"dom: {', '.join(given)} only apply to operate: augment (DOM_DA); operate: remove "
                                  "(DOM_RE) has no augmentation. Remove them or set operate: augment.")
        self.iterations = 2 if iterations is None else int(iterations)
        self.strength = 0.5 if strength is None else float(strength)
        self.augmentation = _choice("augmix" if augmentation is None else augmentation, AUGMENTATIONS,
                                    "augmentation", "(torchvision AugMix / RandAugment, the code's DA_AUG / DA_Rand.)")
        if self.iterations < 1:
            raise ConfigError(f"dom: iterations (the most augmentations per example) must be >= 1 for operate: "
                              f"augment (2 for PGD-AT, 5 or 3 for FGSM-AT in the official README); got {iterations}.")
        if not 0.0 <= self.strength <= 1.0:
            raise ConfigError(f"dom: strength (the blend weight of an augmentation) must be in [0, 1]; got {strength}.")
        self.bn_mode = _choice(bn_mode, BN_MODES, "bn_mode", "The mode of DOM's own forwards.")
        self.first_batch_bn_mode = None if first_batch_bn_mode is None else _choice(
            first_batch_bn_mode, BN_MODES, "first_batch_bn_mode", "None keeps bn_mode on every batch.")
        self.update_bn_stats = bool(update_bn_stats)
        if self.update_bn_stats and self.bn_mode != "train":
            raise ConfigError("dom: update_bn_stats: true needs bn_mode: train (a model in eval mode does not update "
                              "its BatchNorm statistics); set update_bn_stats: false or bn_mode: train.")
        self.epochs: int | None = None
        self.steps_per_epoch: int | None = None
        self._first_batch = False
        self._weights: Tensor | None = None
        self._transform: Callable[[Tensor], Tensor] | None = None

    # -- the training's length and position ------------------------------------------------------------------
    def setup(self, *, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps_per_epoch = int(epochs), int(steps_per_epoch)

    def active(self, epoch: int, step: int) -> bool:
        """Whether DOM acts on the batch of ``step``: ``epoch + (i+1)/n >= start · epochs``, as the code's
        ``training_t >= epochs/2``."""
        if self.epochs is None or self.steps_per_epoch is None:
            raise RuntimeError("dom: the Trainer gives the training's length through Procedure.setup before the first "
                               "batch; call setup(epochs=..., steps_per_epoch=...) when using DOM outside a Trainer.")
        i = step - epoch * self.steps_per_epoch
        return epoch + (i + 1) / self.steps_per_epoch >= self.start * self.epochs

    # -- hooks -----------------------------------------------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        self._first_batch = epoch > 0

    def augment(self, model: nn.Module, x: Tensor, y: Tensor, *, epoch: int, step: int,
                generator: torch.Generator) -> Tensor | None:
        mode = self.first_batch_bn_mode if self._first_batch and self.first_batch_bn_mode else self.bn_mode
        self._first_batch = False
        self._weights = None
        active = self.active(epoch, step)
        update = self.update_bn_stats and mode == "train"
        if not (active or update):
            return None  # the forward would change nothing

        def loss_of(inputs: Tensor, labels: Tensor) -> Tensor:
            with torch.no_grad(), attack_guard(model, mode, update):
                return F.cross_entropy(model(inputs).float(), labels, reduction="none")

        natural = loss_of(x, y)  # every batch, as the code (its train-mode forward moves the BatchNorm statistics)
        if not active:
            return None
        if self.operate == "remove":
            self._weights = removal_weights(natural, self.threshold)
            return None
        pending = natural <= self.threshold
        if not pending.any():
            return None
        return distract(x, y, pending, loss_of=loss_of, transform=lambda v: self.transform(v, generator),
                        threshold=self.threshold, iterations=self.iterations, strength=self.strength)

    def weights(self, ctx: StepContext, per_example: Tensor) -> Tensor | None:
        w, self._weights = self._weights, None
        if w is None:
            return None
        if w.shape != per_example.shape:
            raise ValueError(f"dom: removal weights for {len(w)} examples but the loss has {len(per_example)}: a "
                             "procedure listed after dom changed the batch; list dom last.")
        return w

    # -- the augmentation ------------------------------------------------------------------------------------
    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """torchvision's AugMix / RandAugment (default settings) of ``x`` in [0,1] through uint8, as the code;
        its random draws from torch's global generator, forked and seeded from ``generator``."""
        from torchvision import transforms
        from torchvision.transforms.functional import convert_image_dtype

        if self._transform is None:
            self._transform = transforms.AugMix() if self.augmentation == "augmix" else transforms.RandAugment()
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device).item())
        cuda = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
            if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(cuda[0]):
                    torch.cuda.manual_seed(seed)
            out = self._transform(convert_image_dtype(x, torch.uint8))
        return convert_image_dtype(out, x.dtype)


__all__ = ["DOM", "distract", "removal_weights"]
