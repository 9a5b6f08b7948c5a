"""AutoAttack (Croce & Hein, ICML 2020, arXiv 2003.01690) as a cascade over still-robust points.

The versions follow the official code (fra31/auto-attack, ``set_version``):

* ``standard``: APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR, 9 target classes, 100 iterations,
  1 restart), FAB-T (9 target classes, 100 iterations, 1 restart), Square (5,000 queries, p_init 0.8, 1 restart).
* ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (untargeted, 5 restarts), Square (5,000 queries),
  APGD-T and FAB-T (9 target classes, 1 restart).
* ``rand`` (for randomised defences): APGD-CE and APGD-DLR, 1 restart, expectation over 20 transformations (EOT).

With fewer than 10 classes the targeted attacks use every other class (``num_classes - 1`` targets).
For the L1 threat model (``standard``) APGD-CE runs 5 restarts and APGD-CE / APGD-T use the official ε schedule
(3ε, 2ε, then ε over 30 / 30 / 40 % of the iterations, ``largereps``), APGD-T with 5 target classes, as the official
``_set_version`` does for ``norm='L1'``.

Each component also runs alone (:func:`component_spec`, ``robustrain eval --attack apgd-ce,square``) with the
settings of the first version that contains it: ``standard`` for APGD-CE, APGD-T, FAB-T and Square, ``plus`` for
APGD-DLR and FAB (5 restarts each).

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

from ..errors import ConfigError, RobustrainError, unknown_choice
from ..registry import choice
from ..threat import ThreatModel
from .state import EvalState, flags_to_str, str_to_flags

VERSIONS = ("standard", "plus", "rand")
STANDARD_STEPS = 100
STANDARD_QUERIES = 5000
COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
"""The AutoAttack components that run standalone, by the names the official code logs them with."""


@dataclass(frozen=True)
class StageSpec:
    """One AutoAttack component: ``name`` as the official code logs it, ``kind`` the component, its settings."""

    name: str
    kind: str
    settings: dict
    version: str = "standard"


def autoattack_stages(version: str, num_classes: int, *, steps: int = STANDARD_STEPS,
                      queries: int = STANDARD_QUERIES, norm: str = "linf") -> list[StageSpec]:
    """The stages of AutoAttack ``version`` for a ``num_classes``-way classifier under the ``norm`` threat model.

    ``steps`` and ``queries`` exist for tests and quick looks; anything else than 100 / 5,000 is not the
    standard evaluation and the report says so.
    """
    choice("AutoAttack version", version, VERSIONS)
    if num_classes < 2:
        raise ConfigError(f"AutoAttack needs at least 2 classes, the model has {num_classes}.")
    if steps < 1 or queries < 1:
        raise ConfigError(f"AutoAttack steps and queries must be >= 1, got steps={steps}, queries={queries}.")
    targets = min(9, num_classes - 1)
    apgd = {"steps": steps, "restarts": 1, "eot_iter": 1, "rho": 0.75}
    if norm == "l1":
        apgd["largereps"] = True
    fab = {"steps": steps, "restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9}
    square = {"queries": queries, "restarts": 1, "p_init": 0.8, "rescale_schedule": False}

    def spec(name: str, kind: str, **settings: Any) -> StageSpec:
        return StageSpec(name, kind, settings, version)

    if version == "standard":
        l1 = norm == "l1"
        return [spec("apgd-ce", "apgd", loss="ce", **{**apgd, "restarts": 5 if l1 else 1}),
                spec("apgd-t", "apgd-t", **apgd, target_classes=min(5, targets) if l1 else targets),
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


def component_spec(name: str, num_classes: int, *, steps: int = STANDARD_STEPS, queries: int = STANDARD_QUERIES,
                   norm: str = "linf") -> StageSpec:
    """The AutoAttack component ``name`` (one of :data:`COMPONENTS`) as it runs alone: the settings of the first
    version that holds it (``standard``, else ``plus``)."""
    for version in ("standard", "plus"):
        for spec in autoattack_stages(version, num_classes, steps=steps, queries=queries, norm=norm):
            if spec.name == name:
                return spec
    raise unknown_choice("AutoAttack component", name, COMPONENTS)


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

    return tqdm(total=total, desc=f"{stage.name:>12}", unit="ex", file=sys.stderr, disable=not enabled,
                leave=True, dynamic_ncols=True)


def _check_restored(rec: StageRecord, candidates: Tensor, state: EvalState) -> None:
    """A stage restored from a state file attacked exactly the points its ``after`` stage left robust and found
    robust only points it attacked; anything else is an edited or foreign file."""
    ok = (rec.attacked.shape == candidates.shape and rec.robust.shape == candidates.shape
          and bool((rec.attacked == candidates).all()) and not bool((rec.robust & ~rec.attacked).any()))
    if not ok:
        raise RobustrainError(
            f"evaluation state {str(state.path)!r}: stage {rec.name!r} is inconsistent with the stages before it (it "
            "counts points it never attacked, or attacked other points than those left robust); the file was edited "
            "or damaged. Delete it to run the evaluation afresh.")


def run_cascade(model: nn.Module, x: Tensor, y: Tensor, stages: list[Stage], threat: ThreatModel, *,
                batch_size: int, state: EvalState | None = None, progress: bool = False,
                distributed: bool | None = None) -> CascadeResult:
    """Run ``stages`` in order; each attacks only the points its ``after`` stage left robust.

    The model must already be in the mode to evaluate in (the caller holds ``attack_guard``). Every
    adversarial batch is checked against ``threat`` and for finite values; an example outside the threat
    model is not counted as broken (and the record says how many there were). After every batch the
    records are saved to ``state`` so an interrupted evaluation continues where it stopped.

    ``distributed`` (default: when this process is in a process group; every rank calls with the same
    arguments): the batches of each stage are shared out in rounds, rank ``r`` running batch
    ``first + W·k + r`` of round ``k``; after each round every rank's results (broken examples, their
    adversarial inputs, the validity counts) are gathered on every rank, so each rank enters the next round
    and stage with the flags of one process. A batch is the same batch, with the same seed, as in one
    process, so the records are identical to a single process's (the attacks draw their noise per batch;
    sharding examples instead would change each example's noise). The work unit is a batch: with ``W``
    ranks, a stage with fewer than ``W`` batches leaves ranks idle (a smaller ``batch_size`` spreads it).
    Only the state passed in is saved (rank 0's, after each round).
    """
    from ..distributed import current, gather_objects

    info = current()
    world = info.world_size if (info.enabled if distributed is None else distributed) else 1
    rank = info.rank if world > 1 else 0
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
            _check_restored(rec, candidates, state)
        else:
            rec = StageRecord(stage.name, stage.group, stage.after, stage.settings, candidates, candidates.clone())
        records[stage.name] = rec
        if rec.done:
            continue
        idx = rec.attacked.nonzero().flatten()
        n_batches = -(-idx.numel() // batch_size)
        bar = _progress(stage, idx.numel(), progress)
        bar.update(min(rec.next_batch * batch_size, idx.numel()))
        for first_b in range(rec.next_batch, n_batches, world):
            t0 = time.perf_counter()
            b = first_b + rank
            out = _run_batch(model, x, y, stage, threat, idx[b * batch_size:(b + 1) * batch_size], b, have_adv) \
                if b < n_batches else None
            parts = [out] if world == 1 else gather_objects(_to_cpu(out))
            for part in parts:
                if part is None:
                    continue
                broken, first, rows, adv = part
                rec.robust[broken] = False
                x_adv[first.to(x.device)] = rows.to(device=x.device, dtype=x.dtype)
                have_adv[first] = True
                _merge_adv(rec.adv, adv)
            rec.seconds += time.perf_counter() - t0
            rec.next_batch = min(first_b + world, n_batches)
            state.stages[stage.name] = rec.to_state()
            state.save()
            n_done = min(rec.next_batch * batch_size, idx.numel())  # the points attacked so far, by every rank
            bar.update(n_done - bar.n)
            done = idx[:n_done]  # points still to come are not counted as robust
            bar.set_postfix_str(f"{'correct' if stage.runner is None else 'robust'} "
                                f"{100 * rec.robust[done].float().mean().item():.2f}% of {done.numel()}")
        bar.close()
        rec.done = True
        state.stages[stage.name] = rec.to_state()
        state.save()
    ends = [r for r in records.values() if not any(s.after == r.name for s in stages)]
    final = torch.ones(n, dtype=torch.bool)
    for r in ends:
        final &= r.robust
    return CascadeResult(list(records.values()), final, x_adv, not state.resumed, state.resumed)


def _run_batch(model: nn.Module, x: Tensor, y: Tensor, stage: Stage, threat: ThreatModel, bi: Tensor, b: int,
               have_adv: Tensor) -> tuple[Tensor, Tensor, Tensor, dict | None]:
    """Batch ``b`` of ``stage`` (the examples ``bi``): the examples it breaks, those of them broken for the first
    time in this evaluation with their adversarial inputs, and the validity counts of its adversarial batch."""
    xb, yb = x[bi.to(x.device)], y[bi.to(y.device)]
    if stage.runner is None:
        with torch.no_grad():
            wrong = (model(xb).argmax(dim=1) != yb).cpu()
        return bi[wrong], bi[:0], x[:0], None
    adv = stage.runner(model, xb, yb, b)
    valid, counts = _check_adversarial(stage.name, threat, xb, adv)
    with torch.no_grad():
        wrong = (model(adv).argmax(dim=1) != yb).cpu() & valid
    first = wrong & ~have_adv[bi]
    return bi[wrong], bi[first], adv[first.to(adv.device)].detach(), counts


def _to_cpu(out):
    """One batch's results, ready to send to the other ranks (tensors on the CPU)."""
    return None if out is None else (out[0], out[1], out[2].cpu(), out[3])


def _merge_adv(into: dict, counts: dict | None) -> None:
    """Fold one batch's validity counts into a stage's (maxima, sums, minima: the order of batches is immaterial)."""
    if counts is None:
        return
    into["max_norm"] = max(into["max_norm"], counts["max_norm"])
    into["n_outside"] += counts["n_outside"]
    into["n_nonfinite"] += counts["n_nonfinite"]
    for key, pick in (("min", min), ("max", max)):
        if counts[key] is not None:
            into[key] = counts[key] if into[key] is None else pick(into[key], counts[key])


def _check_adversarial(name: str, threat: ThreatModel, x: Tensor, adv: Tensor) -> tuple[Tensor, dict]:
    """Per-example validity of ``adv`` (finite, in [0,1], within ε of ``x``) and the batch's counts (largest norm,
    examples outside the threat model, non-finite examples, smallest and largest value)."""
    if adv.shape != x.shape:
        raise ConfigError(f"stage {name!r} returned adversarial examples of shape {tuple(adv.shape)} for inputs "
                          f"of shape {tuple(x.shape)}; this is a bug in the attack or backend.")
    finite = torch.isfinite(adv.float()).flatten(1).all(1)
    inside = threat.contains(x, torch.nan_to_num(adv), atol=1e-5) & finite
    norms = threat.norms(torch.nan_to_num(adv.float()) - x.float())
    counts = {"max_norm": float(norms.max()) if norms.numel() else 0.0, "n_outside": int((~inside).sum()),
              "n_nonfinite": int((~finite).sum()), "min": None, "max": None}
    if adv.numel():
        counts["min"], counts["max"] = float(torch.nan_to_num(adv).min()), float(torch.nan_to_num(adv).max())
    return inside.cpu(), counts
