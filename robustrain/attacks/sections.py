"""An attack from a config section (``{name: pgd, steps: 10, ...}``): the builder's training, validation and test
attacks and the evaluation pipeline's stages are built here.

* :func:`build_attack_from`: the attack of a section, with the BatchNorm mode rule of its use.
* :func:`attack_label`: the label of a section's attack in summaries and reports (``pgd-<steps>-<restarts>``).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..threat import ThreatModel
from . import Attack, build_attack


def build_attack_from(section: dict, threat: ThreatModel, *, default_bn: str, force_eval: bool = False,
                      amp_dtype: torch.dtype | None = None) -> Attack:
    kwargs = {k: v for k, v in section.items() if k != "name"}
    if force_eval:
        if kwargs.get("bn_mode", "eval") != "eval":
            raise ConfigError("evaluation and validation attacks run the model in eval mode; remove bn_mode: train.")
        kwargs["bn_mode"] = "eval"
    else:
        kwargs.setdefault("bn_mode", default_bn)
    return build_attack(section["name"], threat, amp_dtype=amp_dtype, **kwargs)


def attack_label(section: dict, threat: ThreatModel) -> str:
    name = section["name"]
    if name == "pgd":
        return f"pgd-{section.get('steps', 10)}-{section.get('restarts', 1)}"
    return name


__all__ = ["attack_label", "build_attack_from"]
