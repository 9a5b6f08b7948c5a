"""Who runs the AutoAttack components: torchattacks (configured to the standard settings) or the official package.

A backend turns one stage description (:class:`~robustrain.evaluation.autoattack.StageSpec`) into adversarial
examples for a batch of still-robust points. The cascade (which points, in which order, the bookkeeping) is
robustrain's own for both backends, so both give the same per-stage report.
"""
from __future__ import annotations

import importlib
from typing import Protocol

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry

BACKENDS: Registry[type] = Registry("AutoAttack backend")
"""The AutoAttack backends by name; each is registered at its definition with ``@BACKENDS.register``."""
_NORMS = {"linf": "Linf", "l2": "L2"}


class Backend(Protocol):
    name: str

    def version(self) -> str | None: ...

    def perturb(self, model: nn.Module, spec, x: Tensor, y: Tensor, *, norm: str, eps: float, seed: int) -> Tensor:
        """Adversarial examples for ``x`` (labels ``y``) under stage ``spec``; points not broken come back as ``x``."""
        ...


def _rng_devices(x: Tensor) -> list[int]:
    return [x.device.index or 0] if x.device.type == "cuda" else []


@BACKENDS.register
class TorchattacksBackend:
    """torchattacks 3.5 components with the settings of the official code (not torchattacks' 10-step defaults).

    torchattacks reseeds the global torch RNG inside every call; each call runs inside ``torch.random.fork_rng``
    so the caller's RNG state is left alone.
    """

    name = "torchattacks"

    def __init__(self) -> None:
        self._ta = importlib.import_module("torchattacks")

    def version(self) -> str | None:
        return getattr(self._ta, "__version__", None)

    def build(self, model: nn.Module, spec, *, norm: str, eps: float, seed: int):
        ta, s, n = self._ta, spec.settings, _NORMS[norm]
        if spec.kind == "apgd":
            atk = ta.APGD(model, norm=n, eps=eps, steps=s["steps"], n_restarts=s["restarts"], seed=seed,
                          loss=s["loss"], eot_iter=s["eot_iter"], rho=s["rho"])
        elif spec.kind == "apgd-t":
            atk = ta.APGDT(model, norm=n, eps=eps, steps=s["steps"], n_restarts=s["restarts"], seed=seed,
                           eot_iter=s["eot_iter"], rho=s["rho"], n_classes=s["target_classes"] + 1)
            atk.n_target_classes = s["target_classes"]
        elif spec.kind in ("fab", "fab-t"):
            atk = ta.FAB(model, norm=n, eps=eps, steps=s["steps"], n_restarts=s["restarts"], alpha_max=s["alpha_max"],
                         eta=s["eta"], beta=s["beta"], seed=seed, multi_targeted=spec.kind == "fab-t",
                         n_classes=s.get("target_classes", 0) + 1)
            if spec.kind == "fab-t":
                atk.n_target_classes = s["target_classes"]
        elif spec.kind == "square":
            atk = ta.Square(model, norm=n, eps=eps, n_queries=s["queries"], n_restarts=s["restarts"],
                            p_init=s["p_init"], loss="margin", resc_schedule=s["rescale_schedule"], seed=seed)
        else:
            raise ConfigError(f"torchattacks backend: no component for stage kind {spec.kind!r}.")
        return atk

    def perturb(self, model: nn.Module, spec, x: Tensor, y: Tensor, *, norm: str, eps: float, seed: int) -> Tensor:
        atk = self.build(model, spec, norm=norm, eps=eps, seed=seed)
        with torch.random.fork_rng(devices=_rng_devices(x)):
            return atk(x, y).detach()


@BACKENDS.register
class OfficialBackend:
    """The official ``autoattack`` package (fra31/auto-attack): its own APGD / APGD-T / FAB / Square objects,
    configured by its own ``set_version``, called stage by stage on the points robustrain's cascade hands over.
    """

    name = "autoattack"

    def __init__(self) -> None:
        try:
            self._aa = importlib.import_module("autoattack")
        except ImportError as e:
            raise ConfigError(
                "--backend autoattack: the official autoattack package is not importable "
                f"({e}). Install it (pip install git+https://github.com/fra31/auto-attack) or use "
                "--backend torchattacks (the default)."
            ) from e

    def version(self) -> str | None:
        return getattr(self._aa, "__version__", "unknown (no __version__)")

    def perturb(self, model: nn.Module, spec, x: Tensor, y: Tensor, *, norm: str, eps: float, seed: int) -> Tensor:
        adv = self._aa.AutoAttack(model, norm=_NORMS[norm], eps=eps, seed=seed, verbose=False, version=spec.version,
                                  device=x.device)
        s = spec.settings
        with torch.random.fork_rng(devices=_rng_devices(x)):
            # NOTE: set_version already chose these; they are set again so a reduced test setting reaches it too.
            if spec.kind == "apgd":
                a = adv.apgd
                a.loss, a.n_iter, a.n_restarts, a.eot_iter = s["loss"], s["steps"], s["restarts"], s["eot_iter"]
            elif spec.kind == "apgd-t":
                a = adv.apgd_targeted
                a.n_iter, a.n_restarts, a.n_target_classes = s["steps"], s["restarts"], s["target_classes"]
            elif spec.kind in ("fab", "fab-t"):
                a = adv.fab
                a.targeted, a.n_iter, a.n_restarts = spec.kind == "fab-t", s["steps"], s["restarts"]
                if spec.kind == "fab-t":
                    a.n_target_classes = s["target_classes"]
            elif spec.kind == "square":
                a = adv.square
                a.n_queries = s["queries"]
            else:
                raise ConfigError(f"autoattack backend: no component for stage kind {spec.kind!r}.")
            a.seed = seed
            return a.perturb(x, y).detach()


def make_backend(name: str) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`: ``torchattacks`` or ``autoattack``)."""
    return BACKENDS.build(name)
