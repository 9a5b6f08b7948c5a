"""Which parameters a weight perturbation touches: an explicit rule by module type and parameter name.

The rule selects, in ``model.named_modules()`` order, every parameter called one of ``params`` (its name
inside its own module, e.g. ``weight``) of a module of one of the ``modules`` kinds. The default,
``modules=("conv", "linear"), params=("weight",)``, is the set the official AWP, RWP and LAP codes perturb
(every "weight" tensor with at least two dimensions): convolution and linear weights, not BatchNorm
affine parameters, not biases. For PreActResNet-18 that is 21 tensors in network order (stem conv, the
block convs and 1x1 shortcuts, the classifier), the order LAP's layer index l counts in.

Parameters that do not require grad (frozen) and parameters shared by two modules (counted once, at their
first module) are handled explicitly: frozen ones are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..errors import ConfigError
from ..registry import choice

MODULE_KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.modules.conv._ConvNd,),
    "linear": (nn.Linear,),
    "norm": (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm),
    "embedding": (nn.Embedding,),
}
"""Module kinds a rule can name, and the classes (with their subclasses) each kind covers."""


def _names(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    out = tuple(str(v) for v in value)
    if not out:
        raise ConfigError(f"weight perturbation: {what} must name at least one entry, got an empty list.")
    return out


@dataclass(frozen=True)
class ParameterRule:
    """Select parameters named ``params`` of modules of the kinds ``modules`` (keys of :data:`MODULE_KINDS`)."""

    modules: tuple[str, ...] = ("conv", "linear")
    params: tuple[str, ...] = ("weight",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", _names(self.modules, "modules"))
        object.__setattr__(self, "params", _names(self.params, "params"))
        for kind in self.modules:
            choice("module kind", kind, MODULE_KINDS, where="weight perturbation modules")

    def select(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """``(qualified name, parameter)`` pairs in network order; raises when nothing matches."""
        classes = tuple(c for kind in self.modules for c in MODULE_KINDS[kind])
        seen: set[int] = set()
        out: list[tuple[str, nn.Parameter]] = []
        for mod_name, module in model.named_modules():
            if not isinstance(module, classes):
                continue
            for p_name, p in module.named_parameters(recurse=False):
                if p_name not in self.params or not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                out.append((f"{mod_name}.{p_name}" if mod_name else p_name, p))
        if not out:
            kinds = sorted({k for m in model.modules() for k, cls in MODULE_KINDS.items() if isinstance(m, cls)})
            raise ConfigError(
                f"weight perturbation: the rule modules={list(self.modules)}, params={list(self.params)} selects no "
                f"trainable parameter of {type(model).__name__}; its modules are of the kinds {kinds or 'none known'}. "
                "Set the perturbation's modules/params options to name some of them."
            )
        return out
