"""An attack from a config section (``{name: pgd, steps: 10, ...}``): the builder's training, validation and test
attacks and the evaluation pipeline's stages are built here.

* :func:`build_attack_from`: the attack of a section, with the BatchNorm mode rule of its use (evaluation and
  validation attacks run the model in eval mode; a training attack's default is ``default_bn``).
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


__all__ = ["build_attack_from"]
