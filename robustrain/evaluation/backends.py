"""Who runs the AutoAttack components: torchattacks (configured to the standard settings) or the official package.

A backend turns one component description (:class:`~robustrain.evaluation.autoattack.StageSpec`: APGD-CE,
APGD-DLR, APGD-T, FAB, FAB-T, Square) into adversarial examples for a batch of points. The cascade (which points,
in which order, the bookkeeping) is robustrain's own for both backends, so both give the same per-stage report, and
the same components run standalone (``robustrain eval --attack apgd-ce,square``).

* ``torchattacks``: torchattacks' APGD / APGDT / FAB / Square (L∞ and L2 only).
* ``autoattack``: the official code of Croce & Hein (fra31/auto-attack), as packaged on PyPI (``pyautoattack``; a
  git install that imports as ``autoattack`` works too): its ``APGDAttack``, ``APGDAttack_targeted``,
  ``FABAttack_PT`` and ``SquareAttack`` built with the stage's settings, for L∞, L2 and L1 (APGD-L1 with the
  official ε schedule 3ε, 2ε, ε for the L1 threat model, Square-L1).
* ``fast``: robustrain's own APGD, APGD-T, FAB-T and Square (:mod:`robustrain.evaluation.fast_autoattack`), written
  to give the official code's per-example outcome (same random starts, same arithmetic) while dropping points from
  the working batch once their flag is fixed; APGD / APGD-T for L∞ and L2, FAB-T and Square for L∞, the
  ``standard`` version's settings (APGD-DLR too; no EOT, no FAB restarts). The cascade hands it the points in the
  same batches as the official ``run_standard_evaluation`` (still-robust points in order, chunks of the batch
  size), so with the same seed the robust flags equal the official package's
  (``scripts/bench_autoattack_fast.py``, ``results/benchmarks/autoattack_fast.md``).
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
_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
OFFICIAL_MODULES = ("pyautoattack", "autoattack")
"""Import names of the official AutoAttack code: the PyPI package ``pyautoattack``, then a git install."""


def default_backend(norm: str) -> str:
    """The backend used when none is named: torchattacks for L∞ / L2, the official code for L1 (torchattacks has no
    L1 APGD or Square)."""
    return "autoattack" if norm == "l1" else "torchattacks"


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
        if norm not in ("linf", "l2"):
            raise ConfigError(f"--backend torchattacks: torchattacks has no {norm} version of {spec.name}; use "
                              "--backend autoattack (the official code, the default for --norm l1).")
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


def import_official():
    """The official AutoAttack package (``pyautoattack``, else ``autoattack``), or a ConfigError saying how to get it."""
    errors = []
    for name in OFFICIAL_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise ConfigError("--backend autoattack: the official AutoAttack code is not importable ("
                      + "; ".join(errors) + "). Install it with  pip install pyautoattack  (a dependency of "
                      "robustrain) or use --backend torchattacks (L∞ and L2).")


@BACKENDS.register
class OfficialBackend:
    """The official AutoAttack code (fra31/auto-attack, PyPI ``pyautoattack``): its APGD / APGD-T / FAB / Square
    classes built with the stage's settings (the ones its ``AutoAttack._set_version`` chooses for the version and
    norm) and called on the points robustrain's cascade hands over.

    The official attacks reseed the global torch RNG; each call runs inside ``torch.random.fork_rng``.
    """

    name = "autoattack"

    def __init__(self) -> None:
        self._aa = import_official()
        pkg = self._aa.__name__
        self._apgd = importlib.import_module(f"{pkg}.autopgd_base")
        self._fab = importlib.import_module(f"{pkg}.fab_pt")
        self._square = importlib.import_module(f"{pkg}.square")

    def version(self) -> str | None:
        return f"{self._aa.__name__} {getattr(self._aa, '__version__', 'unknown (no __version__)')}"

    def build(self, model: nn.Module, spec, *, norm: str, eps: float, seed: int, device: torch.device):
        s, n = spec.settings, _NORMS[norm]
        common = {"norm": n, "eps": eps, "seed": seed, "verbose": False, "device": device}
        if spec.kind == "apgd":
            return self._apgd.APGDAttack(model, n_iter=s["steps"], n_restarts=s["restarts"], loss=s["loss"],
                                         eot_iter=s["eot_iter"], rho=s["rho"],
                                         use_largereps=s.get("largereps", False), **common)
        if spec.kind == "apgd-t":
            return self._apgd.APGDAttack_targeted(model, n_iter=s["steps"], n_restarts=s["restarts"],
                                                  eot_iter=s["eot_iter"], rho=s["rho"],
                                                  n_target_classes=s["target_classes"],
                                                  use_largereps=s.get("largereps", False), **common)
        if spec.kind in ("fab", "fab-t"):
            return self._fab.FABAttack_PT(model, n_iter=s["steps"], n_restarts=s["restarts"], alpha_max=s["alpha_max"],
                                          eta=s["eta"], beta=s["beta"], targeted=spec.kind == "fab-t",
                                          n_target_classes=s.get("target_classes", 9), **common)
        if spec.kind == "square":
            return self._square.SquareAttack(model, n_queries=s["queries"], p_init=s["p_init"],
                                             n_restarts=s["restarts"], resc_schedule=s["rescale_schedule"], **common)
        raise ConfigError(f"autoattack backend: no component for stage kind {spec.kind!r}.")

    def perturb(self, model: nn.Module, spec, x: Tensor, y: Tensor, *, norm: str, eps: float, seed: int) -> Tensor:
        atk = self.build(model, spec, norm=norm, eps=eps, seed=seed, device=x.device)
        with torch.random.fork_rng(devices=_rng_devices(x)):
            return atk.perturb(x, y).detach().to(x.dtype)


@BACKENDS.register
class FastBackend:
    """robustrain's own components (:mod:`~robustrain.evaluation.fast_autoattack`): the official per-example outcome,
    less work on points already broken. They reseed the global torch RNG as the official code does; each call runs
    inside ``torch.random.fork_rng``."""

    name = "fast"

    def version(self) -> str | None:
        return "robustrain"

    SUPPORTED = {"apgd": ("linf", "l2"), "apgd-t": ("linf", "l2"), "fab-t": ("linf",), "square": ("linf",)}
    """The components here, with the threat models each supports."""

    def check(self, spec, norm: str) -> None:
        """ConfigError unless this backend runs ``spec`` under ``norm`` (called when the stages are built)."""
        s = spec.settings
        if spec.kind not in self.SUPPORTED or norm not in self.SUPPORTED[spec.kind]:
            have = "; ".join(f"{k}: {'/'.join(v)}" for k, v in self.SUPPORTED.items())
            raise ConfigError(f"--backend fast has no {spec.name} for the {norm} threat model (it has {have}); use "
                              "--backend autoattack (the official code).")
        if s.get("eot_iter", 1) != 1 or s.get("largereps", False) or (spec.kind == "fab-t" and s["restarts"] != 1):
            raise ConfigError(f"--backend fast: {spec.name} with EOT, the L1 ε schedule or FAB restarts is not "
                              "implemented; use --backend autoattack (the official code).")

    def perturb(self, model: nn.Module, spec, x: Tensor, y: Tensor, *, norm: str, eps: float, seed: int) -> Tensor:
        from . import fast_autoattack as fa

        self.check(spec, norm)
        s = spec.settings
        common = {"norm": norm, "eps": eps, "seed": seed}
        with torch.random.fork_rng(devices=_rng_devices(x)):
            if spec.kind == "apgd":
                adv = fa.apgd(model, x, y, steps=s["steps"], restarts=s["restarts"], loss=s["loss"], rho=s["rho"],
                              **common)
            elif spec.kind == "apgd-t":
                adv = fa.apgd_targeted(model, x, y, steps=s["steps"], restarts=s["restarts"], rho=s["rho"],
                                       target_classes=s["target_classes"], **common)
            elif spec.kind == "fab-t":
                adv = fa.fab_targeted(model, x, y, steps=s["steps"], restarts=s["restarts"],
                                      target_classes=s["target_classes"], alpha_max=s["alpha_max"], eta=s["eta"],
                                      beta=s["beta"], **common)
            elif spec.kind == "square":
                adv = fa.square(model, x, y, queries=s["queries"], p_init=s["p_init"], restarts=s["restarts"],
                                rescale_schedule=s["rescale_schedule"], **common)
            else:
                raise ConfigError(f"--backend fast: no {spec.name} (stage kind {spec.kind!r}); use --backend "
                                  "autoattack (the official code) for it.")
        return adv.detach().to(x.dtype)


def make_backend(name: str) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`: ``torchattacks``, ``autoattack`` or ``fast``)."""
    return BACKENDS.build(name)
