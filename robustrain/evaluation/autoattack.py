"""AutoAttack (Croce & Hein, ICML 2020, arXiv 2003.01690) as a cascade over still-robust points.

The versions follow the official code (fra31/auto-attack, ``set_version``):

* ``standard``: APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR, 9 target classes, 100 iterations,
  1 restart), FAB-T (9 target classes, 100 iterations, 1 restart), Square (5,000 queries, p_init 0.8, 1 restart).
* ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (untargeted, 5 restarts), Square (5,000 queries),
  APGD-T and FAB-T (9 target classes, 1 restart).
* ``rand`` (for randomised defences): APGD-CE and APGD-DLR, 1 restart, expectation over 20 transformations (EOT).

With fewer than 10 classes the targeted attacks use every other class (``num_classes - 1`` targets).

The cascade is generic: each :class:`Stage` attacks the points still robust after the stage named in its
``after`` and records which points it attacked, the robust flags after it and its runtime. One evaluation may
hold several chains (clean → PGD and clean → APGD-CE → ... → Square); the worst case per example is the AND of
the chains' last flags.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..threat import ThreatModel
from .state import EvalState, flags_to_str, str_to_flags

VERSIONS = ("standard", "plus", "rand")
STANDARD_STEPS = 100
STANDARD_QUERIES = 5000


@dataclass(frozen=True)
class StageSpec:
    """One AutoAttack component: ``name`` as the official code logs it, ``kind`` the component, its settings."""

    name: str
    kind: str
    settings: dict
    version: str = "standard"


def autoattack_stages(version: str, num_classes: int, *, steps: int = STANDARD_STEPS,
                      queries: int = STANDARD_QUERIES) -> list[StageSpec]:
    """The stages of AutoAttack ``version`` for a ``num_classes``-way classifier.

    ``steps`` and ``queries`` exist for tests and quick looks; anything else than 100 / 5,000 is not the
    standard evaluation and the report says so.
    """
    if version not in VERSIONS:
        raise ConfigError(f"AutoAttack version {version!r}; expected one of {', '.join(VERSIONS)}.")
    if num_classes < 2:
        raise ConfigError(f"AutoAttack needs at least 2 classes, the model has {num_classes}.")
    if steps < 1 or queries < 1:
        raise ConfigError(f"AutoAttack steps and queries must be >= 1, got steps={steps}, queries={queries}.")
    targets = min(9, num_classes - 1)
    apgd = {"steps": steps, "restarts": 1, "eot_iter": 1, "rho": 0.75}
    fab = {"steps": steps, "restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9}
    square = {"queries": queries, "restarts": 1, "p_init": 0.8, "rescale_schedule": False}

    def spec(name: str, kind: str, **settings: Any) -> StageSpec:
        return StageSpec(name, kind, settings, version)

    if version == "standard":
        return [spec("apgd-ce", "apgd", loss="ce", **apgd),
                spec("apgd-t", "apgd-t", **apgd, target_classes=targets),
                spec("fab-t", "fab-t", **fab, target_classes=targets),
                spec("square", "square", **square)]
    if version == "plus":
        return [spec("apgd-ce", "apgd", loss="ce", **{**apgd, "restarts": 5}),
                spec("apgd-dlr", "apgd", loss="dlr", **{**apgd, "restarts": 5}),
                spec("fab", "fab", **{**fab, "restarts": 5}),
                spec("square", "square", **square),
                spec("apgd-t", "apgd-t", **apgd, target_classes=targets),
                spec("fab-t", "fab-t", **fab, target_classes=targets)]
    return [spec("apgd-ce", "apgd", loss="ce", **{**apgd, "eot_iter": 20}),
            spec("apgd-dlr", "apgd", loss="dlr", **{**apgd, "eot_iter": 20})]


# -- the cascade ------------------------------------------------------------------------------------------
Runner = Callable[[nn.Module, Tensor, Tensor, int], Tensor]
"""(model, x, y, batch index) -> adversarial x; ``None`` as a stage's runner means clean accuracy."""


@dataclass
class Stage:
    name: str
    group: str                      # "clean", an attack label such as "pgd-50-10", or "autoattack"
    after: str | None               # the stage whose robust points this stage attacks (None: every point)
    settings: dict
    runner: Runner | None = None


@dataclass
class StageRecord:
    name: str
    group: str
    after: str | None
    settings: dict
    attacked: Tensor
    robust: Tensor
    seconds: float = 0.0
    next_batch: int = 0
    done: bool = False
    adv: dict = field(default_factory=lambda: {"max_norm": 0.0, "n_outside": 0, "n_nonfinite": 0,
                                               "min": None, "max": None})

    def to_state(self) -> dict:
        return {"group": self.group, "after": self.after, "attacked": flags_to_str(self.attacked),
                "robust": flags_to_str(self.robust), "seconds": self.seconds, "next_batch": self.next_batch,
                "done": self.done, "adv": self.adv}

    @classmethod
    def from_state(cls, stage: Stage, d: dict) -> "StageRecord":
        return cls(stage.name, stage.group, stage.after, stage.settings, str_to_flags(d["attacked"]),
                   str_to_flags(d["robust"]), d["seconds"], d["next_batch"], d["done"], d["adv"])


@dataclass
class CascadeResult:
    records: list[StageRecord]
    final: Tensor                   # worst case per example: the AND of every chain's last flags
    x_adv: Tensor                   # per example an input that breaks it (x itself if none was found)
    x_adv_complete: bool            # False after a resume: examples broken before it keep x in ``x_adv``
    resumed: bool


def _progress(stage: Stage, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{stage.name:>12}", unit="batch", file=sys.stderr, disable=not enabled,
                leave=True, dynamic_ncols=True)


def run_cascade(model: nn.Module, x: Tensor, y: Tensor, stages: list[Stage], threat: ThreatModel, *,
                batch_size: int, state: EvalState | None = None, progress: bool = False) -> CascadeResult:
    """Run ``stages`` in order; each attacks only the points its ``after`` stage left robust.

    The model must already be in the mode to evaluate in (the caller holds ``attack_guard``). Every
    adversarial batch is checked against ``threat`` and for finite values; an example outside the threat
    model is not counted as broken (and the record says how many there were). After every batch the
    records are saved to ``state`` so an interrupted evaluation continues where it stopped.
    """
    n = y.shape[0]
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be unique, got {names}.")
    state = state or EvalState(None, "")
    records: dict[str, StageRecord] = {}
    x_adv, have_adv = x.clone(), torch.zeros(n, dtype=torch.bool)
    for stage in stages:
        if stage.after is not None and stage.after not in records:
            raise ConfigError(f"stage {stage.name!r} runs after {stage.after!r}, which is not an earlier stage.")
        candidates = torch.ones(n, dtype=torch.bool) if stage.after is None else records[stage.after].robust.clone()
        if stage.name in state.stages:
            rec = StageRecord.from_state(stage, state.stages[stage.name])
        else:
            rec = StageRecord(stage.name, stage.group, stage.after, stage.settings, candidates, candidates.clone())
        records[stage.name] = rec
        if rec.done:
            continue
        idx = rec.attacked.nonzero().flatten()
        n_batches = -(-idx.numel() // batch_size)
        bar = _progress(stage, n_batches, progress)
        bar.update(rec.next_batch)
        for b in range(rec.next_batch, n_batches):
            t0 = time.perf_counter()
            bi = idx[b * batch_size:(b + 1) * batch_size]
            xb, yb = x[bi.to(x.device)], y[bi.to(y.device)]
            if stage.runner is None:
                with torch.no_grad():
                    rec.robust[bi] = (model(xb).argmax(dim=1) == yb).cpu()
            else:
                adv = stage.runner(model, xb, yb, b)
                valid = _check_adversarial(rec, threat, xb, adv)
                with torch.no_grad():
                    wrong = (model(adv).argmax(dim=1) != yb).cpu() & valid
                rec.robust[bi[wrong]] = False
                first = wrong & ~have_adv[bi]
                x_adv[bi[first].to(x.device)] = adv[first.to(adv.device)].to(x.dtype)
                have_adv[bi[first]] = True
            rec.seconds += time.perf_counter() - t0
            rec.next_batch = b + 1
            state.stages[stage.name] = rec.to_state()
            state.save()
            bar.update(1)
            bar.set_postfix_str(f"robust acc {100 * rec.robust.float().mean().item():.2f}%")
        bar.close()
        rec.done = True
        state.stages[stage.name] = rec.to_state()
        state.save()
    ends = [r for r in records.values() if not any(s.after == r.name for s in stages)]
    final = torch.ones(n, dtype=torch.bool)
    for r in ends:
        final &= r.robust
    return CascadeResult(list(records.values()), final, x_adv, not state.resumed, state.resumed)


def _check_adversarial(rec: StageRecord, threat: ThreatModel, x: Tensor, adv: Tensor) -> Tensor:
    """Per-example validity of ``adv`` (finite, in [0,1], within ε of ``x``), accumulated into ``rec.adv``."""
    if adv.shape != x.shape:
        raise ConfigError(f"stage {rec.name!r} returned adversarial examples of shape {tuple(adv.shape)} for inputs "
                          f"of shape {tuple(x.shape)}; this is a bug in the attack or backend.")
    finite = torch.isfinite(adv.float()).flatten(1).all(1)
    inside = threat.contains(x, torch.nan_to_num(adv), atol=1e-5) & finite
    norms = threat.norms(torch.nan_to_num(adv.float()) - x.float())
    a = rec.adv
    a["max_norm"] = max(a["max_norm"], float(norms.max()) if norms.numel() else 0.0)
    a["n_outside"] += int((~inside).sum())
    a["n_nonfinite"] += int((~finite).sum())
    if adv.numel():
        lo, hi = float(torch.nan_to_num(adv).min()), float(torch.nan_to_num(adv).max())
        a["min"] = lo if a["min"] is None else min(a["min"], lo)
        a["max"] = hi if a["max"] is None else max(a["max"], hi)
    return inside.cpu()
