"""One robustness evaluation from start to report: clean, robustrain attacks (PGD, ...), AutoAttack, sanity checks."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import attack_guard
from ..errors import ConfigError, RobustrainError
from ..provenance import package_versions
from ..tables import radius_label
from ..threat import ThreatModel
from .autoattack import (COMPONENTS, STANDARD_QUERIES, STANDARD_STEPS, CascadeResult, Stage, StageSpec,
                         autoattack_stages, component_spec, run_cascade)
from .backends import default_backend, make_backend
from .report import SCHEMA_VERSION, data_sha256, model_sha256
from .sanity import announce, checks_after, checks_before
from .state import EvalState, flags_to_str

AUTOATTACK_NAMES = ("autoattack", "aa")
DEFAULT_PGD = {"name": "pgd", "steps": 50, "restarts": 10}
N_CHECK = 256


@dataclass
class EvalPlan:
    """What to run. ``attacks`` lists ``clean`` (always run, first), ``autoattack`` (the cascade), AutoAttack
    components to run alone (:data:`~robustrain.evaluation.autoattack.COMPONENTS`: ``apgd-ce``, ``square``, ...,
    each on every clean-correct point) and robustrain attack names (``pgd``, ``cw``, ...); ``sections`` gives the
    config section of each robustrain attack (default: PGD-50-10, step ε/4); the report states each attack's
    :meth:`~robustrain.attacks.Attack.settings`. ``backend`` runs the AutoAttack components (None: torchattacks
    for L∞ / L2, the official code for L1)."""

    threat: ThreatModel
    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd", "autoattack"])
    sections: dict[str, dict] = field(default_factory=dict)
    version: str = "standard"
    backend: str | None = None
    batch_size: int = 500
    seed: int = 0
    aa_steps: int = STANDARD_STEPS
    square_queries: int = STANDARD_QUERIES
    amp_dtype: torch.dtype | None = None


def _attack_stage(name: str, section: dict, plan: EvalPlan) -> Stage:
    from ..attacks.sections import build_attack_from

    attack = build_attack_from(section, plan.threat, default_bn="eval", force_eval=True, amp_dtype=plan.amp_dtype)
    label = attack.label
    settings = {**section, **attack.settings()}  # what the attack really does (its step and step rule), not a guess

    def runner(model: nn.Module, x: Tensor, y: Tensor, b: int) -> Tensor:
        gen = torch.Generator(device=x.device).manual_seed(plan.seed * 1_000_003 + b)
        return attack(model, x, y, generator=gen).x_adv

    return Stage(label, label, "clean", settings, runner)


def _component_stage(spec: StageSpec, name: str, group: str, after: str, backend, plan: EvalPlan) -> Stage:
    check = getattr(backend, "check", None)  # a backend that lacks some settings says so before any stage runs
    if check is not None:
        check(spec, plan.threat.norm)
    def runner(model, x, y, b):
        return backend.perturb(model, spec, x, y, norm=plan.threat.norm, eps=plan.threat.eps, seed=plan.seed)

    return Stage(name, group, after, {"kind": spec.kind, "version": spec.version, **spec.settings}, runner)


def backend_name(plan: EvalPlan) -> str:
    """The backend that runs ``plan``'s AutoAttack components: the one named, else the norm's default."""
    return plan.backend or default_backend(plan.threat.norm)


def build_stages(plan: EvalPlan, num_classes: int) -> tuple[list[Stage], Any]:
    """The stages of ``plan`` in run order, and the AutoAttack backend (None when no component runs).

    Standalone components are named as given (``apgd-ce``); when the cascade also runs, its stages of the same name
    are called ``autoattack/apgd-ce`` so every stage name is unique."""
    from ..attacks import ATTACKS

    stages = [Stage("clean", "clean", None, {})]
    unknown = [a for a in plan.attacks if a != "clean" and a not in AUTOATTACK_NAMES and a not in COMPONENTS
               and a not in plan.sections and a not in ATTACKS]
    if unknown:
        raise ConfigError(f"--attack: unknown {unknown}; expected clean, autoattack, an AutoAttack component "
                          f"({', '.join(COMPONENTS)}) or a robustrain attack ({', '.join(sorted(ATTACKS))}).")
    needs_backend = any(a in AUTOATTACK_NAMES or a in COMPONENTS for a in plan.attacks)
    backend = make_backend(backend_name(plan)) if needs_backend else None
    kw = {"steps": plan.aa_steps, "queries": plan.square_queries, "norm": plan.threat.norm}
    for a in plan.attacks:
        if a == "clean":
            continue
        if a in AUTOATTACK_NAMES:
            after = "clean"
            for spec in autoattack_stages(plan.version, num_classes, **kw):
                name = f"autoattack/{spec.name}" if spec.name in plan.attacks else spec.name
                stages.append(_component_stage(spec, name, "autoattack", after, backend, plan))
                after = name
        elif a in COMPONENTS:
            stages.append(_component_stage(component_spec(a, num_classes, **kw), a, "component", "clean", backend,
                                           plan))
        else:
            stages.append(_attack_stage(a, plan.sections.get(a, DEFAULT_PGD if a == "pgd" else {"name": a}), plan))
    return stages, backend


def _check_examples(x: Tensor, y: Tensor, num_classes: int) -> None:
    """Images in [0,1] (finite), one integer label in [0, num_classes) each, at least one example."""
    from ..attacks.base import check_inputs

    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ConfigError(f"expected tensors x (images) and y (labels), got {type(x).__name__} and {type(y).__name__}.")
    if y.shape[:1] == (0,):
        raise ConfigError("no examples to evaluate (x and y are empty); pass at least one image.")
    try:
        check_inputs(x, y)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"evaluation inputs: {e}") from None
    if y.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise ConfigError(f"labels must be integer class indices, got dtype {y.dtype}; pass y.long().")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes}) (num_classes={num_classes}), got {lo}..{hi}.")


def evaluate_robustness(model: nn.Module, x: Tensor, y: Tensor, plan: EvalPlan, *, num_classes: int,
                        model_info: dict | None = None, data_info: dict | None = None, out_dir: Path | None = None,
                        progress: bool = False) -> tuple[dict[str, Any], CascadeResult]:
    """Evaluate ``model`` on inputs ``x`` in [0,1] (labels ``y``) as ``plan`` says; return the report and the
    cascade result. With ``out_dir`` the progress is saved there after every batch and a rerun of the same
    evaluation continues where it stopped (the state file is removed when the evaluation completes).

    In a process group (``torchrun``) every rank calls this with the same arguments: the cascade shares each
    stage's batches out over the ranks and gathers the per-example results (:func:`run_cascade`), so every rank
    returns the report of one process; rank 0 alone reads and writes the progress file and prints."""
    from ..distributed import broadcast_object, current

    info = current()
    _check_examples(x, y, num_classes)
    n = int(y.shape[0])
    stages, backend = build_stages(plan, num_classes)
    m_sha, d_sha = model_sha256(model), data_sha256(x, y)
    key_config = {"model": m_sha, "data": d_sha, "threat": [plan.threat.norm, plan.threat.eps], "seed": plan.seed,
                  "batch_size": plan.batch_size, "backend": backend.name if backend else None,
                  "stages": [[s.name, s.after, s.settings] for s in stages]}
    state, error = EvalState(None, ""), None
    try:
        state = EvalState.for_dir(out_dir if info.is_main else None, key_config)
    except RobustrainError as e:  # a foreign or unreadable progress file: every rank stops, none waits
        error = e
    if info.enabled:  # every rank continues from rank 0's progress file
        state.stages, state.resumed, error = broadcast_object((state.stages, state.resumed, error))
    if error is not None:
        raise error
    given_training = any(m.training for m in model.modules())
    t0 = time.perf_counter()
    with attack_guard(model, "eval"):
        rand = plan.version == "rand" and any(a in AUTOATTACK_NAMES for a in plan.attacks)
        before = checks_before(model, x[:N_CHECK], y[:N_CHECK], given_training=given_training, randomised_ok=rand)
        if info.is_main:
            announce(before)
        check_seconds = time.perf_counter() - t0
        result = run_cascade(model, x, y, stages, plan.threat, batch_size=plan.batch_size, state=state,
                             progress=progress and info.is_main)
    desc = f"the {plan.threat.norm} ball of radius {radius_label(plan.threat.eps)}"
    after = checks_after(result.records, n, num_classes, desc)
    if info.is_main:
        announce(after)
    checks = [c.as_dict() for c in before + after]
    recs = result.records
    acc = {r.name: float(r.robust.float().mean()) if n else 0.0 for r in recs}
    aa = [r for r in recs if r.group == "autoattack"]
    if aa:
        acc["autoattack"] = acc[aa[-1].name]
    components = any(r.group == "component" for r in recs)
    acc["worst_case"] = float(result.final.float().mean()) if n else 0.0
    report = {
        "schema_version": SCHEMA_VERSION,
        "model": {"sha256": m_sha, "num_classes": num_classes, **(model_info or {"source": "module"})},
        "data": {"n_ex": n, "sha256": d_sha, **(data_info or {"dataset": "tensor", "split": "given"})},
        "threat": {"norm": plan.threat.norm, "eps": plan.threat.eps},
        "attacks": [s.name for s in stages],
        "backend": {"name": backend.name, "version": backend.version()} if backend else None,
        "seed": plan.seed, "batch_size": plan.batch_size, "n_ex": n,
        "settings": {s.name: s.settings for s in stages if s.group != "clean"},
        "standard": ((plan.aa_steps == STANDARD_STEPS and plan.square_queries == STANDARD_QUERIES)
                     if aa or components else None),
        "stages": [{"name": r.name, "group": r.group, "after": r.after, "settings": r.settings,
                    "n_attacked": int(r.attacked.sum()), "n_robust": int(r.robust.sum()), "robust_acc": acc[r.name],
                    "seconds": round(r.seconds, 3), "attacked": flags_to_str(r.attacked),
                    "robust": flags_to_str(r.robust), "adversarial": None if r.group == "clean" else r.adv}
                   for r in recs],
        "accuracy": acc,
        "final": {"robust_acc": acc["worst_case"], "n_robust": int(result.final.sum()),
                  "robust": flags_to_str(result.final)},
        "sanity": {"checks": checks, "n_warnings": sum(c["level"] == "warning" for c in checks),
                   "n_errors": sum(c["level"] == "error" for c in checks)},
        "runtime": {"total_seconds": round(check_seconds + sum(r.seconds for r in recs), 3),
                    "checks_seconds": round(check_seconds, 3),
                    "per_stage": {r.name: round(r.seconds, 3) for r in recs}, "world_size": info.world_size},
        "environment": {**package_versions(), "device": str(x.device), "threads": torch.get_num_threads()},
        "resumed": result.resumed,
    }
    if info.is_main:
        state.remove()
    return report, result
