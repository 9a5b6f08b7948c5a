"""The overfitting monitor: a callback that watches a run for catastrophic and robust overfitting and acts.

Every ``every`` steps it attacks a fixed batch of held-out images (clean, FGSM, PGD-k; model in eval mode,
BatchNorm statistics untouched) and logs the result with the early-warning signals the run provides: input
gradient alignment, measured here, and every signal a loss term declares in its ``signals`` attribute
(:class:`~.hooks.LossTerm`: ELLE's E_lin, AAER's abnormal-example rate, GradAlign's cosine), averaged over the
steps since the previous check. The decisions are the registered rules of :mod:`.monitor_rules`, pure functions of
the history, with thresholds stated against the sampling error of the check batch and the validation set; the
robust-overfitting rule watches only the epochs after the schedule's first learning-rate decay unless told
otherwise. Actions: ``warn`` (log the event), ``stop`` (end training; the validation-best checkpoint is kept by the
checkpointer), ``rollback`` (restore the whole training state a checkpoint holds, weights, optimiser, loss terms,
weight perturbation, procedures and the attack's per-example buffers, as of the last *healthy*
check, apply a remedy through ``trainer.apply``, continue; after ``max_rollbacks`` it stops). A check is healthy
when no rule fires and every catastrophic-overfitting rule's own healthy criterion holds (PGD accuracy at most half the drop threshold below its best; FGSM−PGD gap at
most half-way from the healthy gap to the threshold): a check that passed while the collapse had already begun is
not a rollback target.

In a distributed run (torchrun) rank 0 measures each check and decides; the check and the decision are broadcast and
every rank carries the action out (stop, or the same rollback and remedy), so the ranks stay alike.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks import FGSM, attack_guard, build_attack
from ..distributed import broadcast_object
from ..errors import ConfigError
from ..registry import choice
from ..evaluation import evaluate
from ..threat import ThreatModel
from .callbacks import Callback
from .monitor_rules import History, Rule, build_rule
from .monitor_rules._stats import first_decay
from .overfitting import Check, COThresholds, co_rules
from .remedies import REMEDIES, Remedy, build_remedy

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

ACTIONS = ("warn", "stop", "rollback")


def declared_signals(terms: Any) -> dict[str, str]:
    """The signals the loss terms declare: ``<term>/<signal>`` → the log key ``<term>/<key>`` it is read from."""
    return {f"{t.name}/{sig}": f"{t.name}/{key}" for t in terms for sig, key in getattr(t, "signals", {}).items()}


def default_rules(co: COThresholds = COThresholds(), false_alarm: float = 0.01) -> list[Rule]:
    """pgd_drop, fgsm_pgd_gap (unless ``co.gap`` is None) and robust_overfitting at ``false_alarm``."""
    return [*co_rules(co, false_alarm), build_rule("robust_overfitting", false_alarm=false_alarm)]


def gradient_alignment(model: torch.nn.Module, x: Tensor, y: Tensor, threat: ThreatModel,
                       generator: torch.Generator | None) -> float:
    """Mean cosine between ∇ₓℓ(x) and ∇ₓℓ(x+η), η uniform in the ε-ball (it collapses at CO, GradAlign)."""
    probe = FGSM(threat, bn_mode="eval")
    eta = threat.random_init(x, generator)
    with attack_guard(model, "eval"):
        g0, _, _ = probe.input_gradient(model, x, torch.zeros_like(eta), y)
        g1, _, _ = probe.input_gradient(model, x, eta, y)
    return F.cosine_similarity(g0.flatten(1), g1.flatten(1), dim=1, eps=1e-12).mean().item()


class OverfitMonitor(Callback):
    """Detect catastrophic overfitting (every ``every`` steps) and robust overfitting (every epoch), and act.

    Args:
        x_check, y_check: the fixed held-out batch (inputs in [0,1]).
        threat: the training threat model.
        every: steps between CO checks (default: once per epoch, at its last step).
        pgd_steps: steps of the check's PGD (step ε/4, one random start).
        train_batch: also check the first training batch of each epoch (Wong et al.); the decision uses the
            held-out batch.
        co: the effect floors of the default catastrophic-overfitting rules (ignored when ``rules`` is given).
        rules: the decision rules (:mod:`.monitor_rules`); default :func:`default_rules` at ``false_alarm``.
        false_alarm: the default rules' stated false-alarm probability per run.
        n_val: images in the validation set (the robust-overfitting rule's sampling error); None: floors only.
        action: warn, stop or rollback.
        remedy: for rollback: a :class:`~.remedies.Remedy` (the builder builds it from ``monitor.remedy``) or its
            section, ``{"kind": "lr", "factor": 0.5}``, ``{"kind": "attack", "name": "nfgsm", ...}`` or
            ``{"kind": "regulariser", "name": "elle", ...}``. The monitor decides when; ``trainer.apply(remedy)``
            changes the composition.
        max_rollbacks: after this many rollbacks the monitor stops the run at the next collapse.
        seed: seeds the check's random starts (the same starts at every check).
        build_term: how a ``regulariser`` remedy given as a section builds its loss term,
            ``build_term(name, threat, **options)`` (:func:`robustrain.regularisers.build_regulariser`; training does
            not import the regularisers, which sit above it).
    """

    state_key = "OverfitMonitor"
    every_rank = True  # distributed: rank 0 measures and decides, every rank carries the decision out

    def __init__(self, x_check: Tensor, y_check: Tensor, threat: ThreatModel, *, every: int | None = None,
                 pgd_steps: int = 10, train_batch: bool = False, co: COThresholds = COThresholds(),
                 rules: Any = None, false_alarm: float = 0.01, n_val: int | None = None, action: str = "warn",
                 remedy: dict | None = None, max_rollbacks: int = 2, seed: int = 0,
                 build_term: Callable[..., Any] | None = None):
        choice("monitor action", action, ACTIONS, "monitor.action")
        if not isinstance(remedy, Remedy):
            section = dict(remedy or {})
            if action == "rollback" and section.get("kind") not in REMEDIES:
                raise ConfigError(
                    f"monitor.action rollback needs monitor.remedy with kind in {REMEDIES.names()}, e.g. "
                    "{kind: lr, factor: 0.5}, "
                    f"{{kind: attack, name: nfgsm}} or {{kind: regulariser, name: elle_a}}; got {section!r}."
                )
            remedy = build_remedy(section, threat=threat, build_term=build_term) if section else None
        if every is not None and every < 1:
            raise ConfigError(f"monitor.every must be >= 1 step, got {every}.")
        self.x, self.y = x_check, y_check
        self.threat = threat
        self.every = every
        self.train_batch = train_batch
        self.rules: list[Rule] = list(rules) if rules is not None else default_rules(co, false_alarm)
        self.co_rules = [r for r in self.rules if r.kind == "catastrophic_overfitting"]
        self.ro_rules = [r for r in self.rules if r.kind == "robust_overfitting"]
        self.n_val = n_val
        self.action, self.max_rollbacks = action, int(max_rollbacks)
        self.remedy: Remedy | None = remedy
        self.seed = int(seed)
        self.fgsm = build_attack("fgsm", threat, bn_mode="eval")
        self.pgd = build_attack("pgd", threat, steps=pgd_steps, restarts=1, bn_mode="eval")
        # state
        self.checks: list[Check] = []
        self.val_robust: list[float] = []
        self.val_flags: list[Tensor] = []  # per epoch: the validation images' robust flags (bool, on the CPU)
        self.val_lr: list[float] = []  # the schedule's lr at the end of each epoch
        self.arm_epoch: int | None = None  # from the schedule at fit start (robust-overfitting rules)
        self.epochs: int | None = None
        self.checks_planned: int | None = None
        self.events: list[dict[str, Any]] = []
        self.rollbacks = 0
        self.applied: list[dict] = []
        self.ro_declared = False
        self.co_active = False
        self.snapshot: dict[str, Any] | None = None
        self.check_seconds = 0.0
        self._signals: dict[str, list[float]] = {}  # declared signal -> finite values since the last check
        self._declared: dict[str, str] = {}  # declared signal -> log key, as of the last step
        self._seen: set[str] = set()  # declared signals whose log key arrived since the last check
        self.missing_signals: set[str] = set()  # declared signals that never arrived between two checks

    # -- hooks ---------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: "Trainer") -> None:
        """Read the plan: epochs, checks, and the first learning-rate decay of the schedule."""
        spe = trainer.steps_per_epoch
        self.epochs = int(trainer.epochs)
        self.checks_planned = max(1, self.epochs * spe // (self.every or spe))
        try:  # the schedule is a function of the global step; its lr at each epoch's end
            lrs = [float(trainer.schedule(e * spe)) for e in range(1, self.epochs + 1)]
        except Exception:  # noqa: BLE001 - an unreadable schedule: the rules derive the decay from the logged lr
            self.arm_epoch = None
        else:
            decay = first_decay(lrs)
            self.arm_epoch = 0 if decay is None else decay  # a schedule that never decays is watched throughout

    def on_batch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        self._declared = declared_signals(trainer.loss_terms)
        for signal, key in self._declared.items():
            if key in logs:
                self._seen.add(signal)
                value = float(logs[key])
                if value == value and abs(value) != float("inf"):  # NaN (e.g. no valid example this step) skipped
                    self._signals.setdefault(signal, []).append(value)
        every = self.every or trainer.steps_per_epoch
        if trainer.step % every == 0:
            self.check(trainer)

    def history(self, checks: list[Check] | None = None) -> History:
        """What the rules read (``checks`` replaces the recorded checks)."""
        return History(checks=self.checks if checks is None else checks, val_robust=list(self.val_robust),
                       lr=list(self.val_lr), n_val=self.n_val, arm_epoch=self.arm_epoch, epochs=self.epochs,
                       checks_planned=self.checks_planned, val_flags=list(self.val_flags))

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if "val_robust_acc" not in metrics:
            return
        self.val_robust.append(metrics["val_robust_acc"])
        result = getattr(trainer, "val_result", None)  # the per-example flags of this validation (paired rules)
        if result is not None and "robust" in result.correct and len(self.val_flags) == len(self.val_robust) - 1:
            self.val_flags.append(result.correct["robust"].detach().to("cpu", torch.bool))
        self.val_lr.append(float(metrics.get("lr", trainer.schedule(trainer.step))))
        if self.ro_declared:
            return
        history = self.history()
        for rule in self.ro_rules:
            evidence = rule(history)
            if evidence is None:
                continue
            self.ro_declared = True
            self._declare(trainer, "robust_overfitting", evidence, rule.message(evidence))
            if self.action == "stop":
                trainer.should_stop = True
            return

    def on_checkpoint_loaded(self, trainer: "Trainer") -> None:
        for _ in self.applied:  # the remedies applied before the checkpoint, again (the run's config builds it)
            trainer.apply(self.remedy)

    # -- the check -----------------------------------------------------------------------------------
    def _measure(self, trainer: "Trainer", x: Tensor, y: Tensor, factor: float = 1.0) -> dict[str, float]:
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        attacks = {"fgsm": self.fgsm, "pgd": self.pgd}
        if factor < 1.0:
            attacks = {k: a.scaled(factor) for k, a in attacks.items()}
        res = evaluate(trainer.model, [(x, y)], attacks, generator=gen, amp_dtype=trainer.amp_dtype)
        acc = res.accuracy()
        acc["grad_alignment"] = gradient_alignment(trainer.model, x, y, attacks["fgsm"].threat, gen)
        return acc

    def _new_check(self, trainer: "Trainer") -> Check:
        """Measure the held-out check batch (and the first training batch) at the radius being trained."""
        x, y = self.x.to(trainer.device), self.y.to(trainer.device)
        factor = trainer.eps_factor()  # during an ε warm-up, check at the radius being trained
        acc = self._measure(trainer, x, y, factor)
        signals = {"grad_alignment": acc["grad_alignment"]}
        signals.update({k: sum(v) / len(v) for k, v in self._signals.items() if v})
        missing = set(self._declared) - self._seen
        if missing and trainer.step > 0:
            self.missing_signals |= missing
            warnings.warn(f"overfitting monitor: declared signals {sorted(missing)} were not in the training logs "
                          f"since the last check (looked for {[self._declared[m] for m in sorted(missing)]})",
                          stacklevel=2)
        if self.train_batch:
            xt, yt = next(iter(trainer.train_loader.iterate(trainer.epoch)))
            tacc = self._measure(trainer, xt, yt, factor)
            signals.update({f"train_{k}": v for k, v in tacc.items()})
        return Check(trainer.step, trainer.epoch, acc["clean"], acc["fgsm"], acc["pgd"], signals,
                     eps=self.threat.eps * factor, n=len(y))

    def decide(self, checks: list[Check]) -> tuple[dict[str, Any] | None, Rule | None, bool]:
        """(evidence, the rule that fired, healthy) at the last of ``checks``; a pure function of the history."""
        history = self.history(checks)
        for rule in self.co_rules:
            evidence = rule(history)
            if evidence is not None:
                cur = checks[-1]
                same = [c for c in checks[:-1] if c.eps == cur.eps]
                if same:  # the drop from the best, whichever rule fired
                    evidence.setdefault("best_pgd_acc", max(c.pgd for c in same))
                    evidence.setdefault("pgd_drop", evidence["best_pgd_acc"] - cur.pgd)
                evidence.update({"eps": cur.eps, **{f"signal/{k}": v for k, v in cur.signals.items()}})
                return evidence, rule, False
        return None, None, all(rule.healthy(history) for rule in self.co_rules)

    def check(self, trainer: "Trainer") -> Check:
        """Run one check, decide, act; returns the check."""
        t0 = time.perf_counter()
        decided = None
        if trainer.dist.is_main:  # distributed: measured and decided once, on rank 0, and broadcast
            chk = self._new_check(trainer)
            evidence, rule, healthy = self.decide([*self.checks, chk])
            decided = (chk, evidence, rule.message(evidence) if rule is not None else "", healthy)
        self._signals, self._seen = {}, set()
        chk, evidence, message, healthy = broadcast_object(decided)
        signals = chk.signals
        self.checks.append(chk)
        self.check_seconds += time.perf_counter() - t0
        trainer.emit({"kind": "monitor_check", "eps": chk.eps, "clean_acc": chk.clean, "fgsm_acc": chk.fgsm, "pgd_acc": chk.pgd,
                      **{f"signal/{k}": v for k, v in signals.items()}, "healthy": float(healthy),
                      "check_seconds": time.perf_counter() - t0})
        if evidence is None:
            self.co_active = False
            if self.action == "rollback" and healthy:
                self._take_snapshot(trainer)
            return chk
        if self.co_active:  # already declared (warn): one event per episode, not one per check
            return chk
        self.co_active = self.action == "warn"
        self._declare(trainer, "catastrophic_overfitting", evidence, message)
        if self.action == "stop":
            trainer.should_stop = True
        elif self.action == "rollback":
            self._rollback(trainer)
        return chk

    # -- actions -------------------------------------------------------------------------------------
    def _declare(self, trainer: "Trainer", kind: str, evidence: dict[str, Any], message: str) -> None:
        event = {"kind": kind, "action": self.action, "message": message,
                 **{k: v if isinstance(v, str) else float(v) for k, v in evidence.items()}}
        self.events.append({"epoch": trainer.epoch, "step": trainer.step, **event})
        trainer.emit(event)

    def _take_snapshot(self, trainer: "Trainer") -> None:
        """A copy of the whole training state a checkpoint holds (:meth:`Trainer.training_state`: weights,
        optimiser, loss terms, weight perturbation, procedures, the attack's per-example buffers)."""
        self.snapshot = {**copy.deepcopy(trainer.training_state()), "n_checks": len(self.checks), "step": trainer.step}

    def _rollback(self, trainer: "Trainer") -> None:
        if self.rollbacks >= self.max_rollbacks or self.snapshot is None:
            reason = "no healthy check to roll back to" if self.snapshot is None else f"{self.rollbacks} rollbacks done"
            self._declare(trainer, "give_up", {"rollbacks": self.rollbacks},
                          f"monitor gives up ({reason}); training stops, best.pt holds the validation-best model")
            trainer.should_stop = True
            return
        snap = self.snapshot
        # not strict: a snapshot taken before an earlier remedy changed the composition restores what it holds
        trainer.load_training_state(snap, source=f"the monitor's snapshot of step {snap['step']}", strict=False,
                                    keep=True)
        del self.checks[snap["n_checks"]:]
        self.rollbacks += 1
        spec = self.remedy.spec()
        self.applied.append(spec)
        trainer.apply(self.remedy)
        self._declare(trainer, "rollback", {"to_step": snap["step"], "rollbacks": self.rollbacks},
                      f"rolled back to the weights of step {snap['step']} and applied the remedy {spec}")

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "checks": [c.as_dict() for c in self.checks], "val_robust": list(self.val_robust),
            "val_flags": torch.stack(self.val_flags) if self.val_flags else None,
            "events": list(self.events), "rollbacks": self.rollbacks, "applied": list(self.applied),
            "val_lr": list(self.val_lr), "ro_declared": self.ro_declared, "co_active": self.co_active, "snapshot": self.snapshot, "check_seconds": self.check_seconds,
            "signals": {k: list(v) for k, v in self._signals.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checks = [Check(**c) for c in state["checks"]]
        self.val_robust = list(state["val_robust"])
        flags = state.get("val_flags")  # absent in checkpoints written before the paired rule
        self.val_flags = [] if flags is None else list(flags.to(torch.bool).unbind(0))
        self.val_lr = list(state.get("val_lr", []))  # absent in checkpoints written before the schedule-aware rules
        self.events = list(state["events"])
        self.rollbacks = int(state["rollbacks"])
        self.applied = list(state["applied"])
        self.ro_declared = bool(state["ro_declared"])
        self.co_active = bool(state["co_active"])
        self.snapshot = state["snapshot"]
        self.check_seconds = float(state["check_seconds"])
        self._signals = {k: list(v) for k, v in state["signals"].items()}
