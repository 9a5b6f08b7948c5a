"""The overfitting monitor: a callback that watches a run for catastrophic and robust overfitting and acts.

Every ``every`` steps it attacks a fixed batch of held-out images (clean, FGSM, PGD-k; model in eval mode,
BatchNorm statistics untouched) and logs the result with the early-warning signals the run provides (input
gradient alignment, measured here; ELLE's linearity error and AAER's abnormal-example rate when those terms
are on). The decisions are the pure rules of :mod:`.overfitting`. Actions: ``warn`` (log the event),
``stop`` (end training; the validation-best checkpoint is kept by the checkpointer), ``rollback`` (restore
the weights and optimiser state of the last healthy check, apply a remedy, continue; after
``max_rollbacks`` it stops).

In a distributed run (torchrun) rank 0 measures each check and decides; the check and the decision are broadcast and
every rank carries the action out (stop, or the same rollback and remedy), so the ranks stay alike.
"""
from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks import FGSM, attack_guard, build_attack
from ..distributed import broadcast_object
from ..errors import ConfigError
from ..evaluation import evaluate
from ..threat import ThreatModel
from .callbacks import Callback
from .trainer import scaled_attack
from .overfitting import Check, COThresholds, ROThresholds, detect_catastrophic, detect_robust_overfitting

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

ACTIONS = ("warn", "stop", "rollback")
REMEDIES = ("lr", "attack", "regulariser")
SIGNAL_KEYS = ("elle/e_lin", "aaer/aae_rate", "gradalign/cos")


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
        co, ro: thresholds.
        action: warn, stop or rollback.
        remedy: for rollback: ``{"kind": "lr", "factor": 0.5}``, ``{"kind": "attack", "name": "nfgsm", ...}``
            or ``{"kind": "regulariser", "name": "elle", ...}``.
        max_rollbacks: after this many rollbacks the monitor stops the run at the next collapse.
        seed: seeds the check's random starts (the same starts at every check).
    """

    state_key = "OverfitMonitor"
    every_rank = True  # distributed: rank 0 measures and decides, every rank carries the decision out

    def __init__(self, x_check: Tensor, y_check: Tensor, threat: ThreatModel, *, every: int | None = None,
                 pgd_steps: int = 10, train_batch: bool = False, co: COThresholds = COThresholds(),
                 ro: ROThresholds = ROThresholds(), action: str = "warn", remedy: dict | None = None,
                 max_rollbacks: int = 2, seed: int = 0):
        if action not in ACTIONS:
            raise ConfigError(f"monitor.action = {action!r}; expected one of {ACTIONS}.")
        remedy = dict(remedy or {})
        if action == "rollback" and remedy.get("kind") not in REMEDIES:
            raise ConfigError(
                f"monitor.action rollback needs monitor.remedy with kind in {REMEDIES}, e.g. {{kind: lr, factor: 0.5}}, "
                f"{{kind: attack, name: nfgsm}} or {{kind: regulariser, name: elle_a}}; got {remedy!r}."
            )
        if every is not None and every < 1:
            raise ConfigError(f"monitor.every must be >= 1 step, got {every}.")
        self.x, self.y = x_check, y_check
        self.threat = threat
        self.every = every
        self.train_batch = train_batch
        self.co, self.ro = co, ro
        self.action, self.remedy, self.max_rollbacks = action, remedy, int(max_rollbacks)
        self.seed = int(seed)
        self.fgsm = build_attack("fgsm", threat, bn_mode="eval")
        self.pgd = build_attack("pgd", threat, steps=pgd_steps, restarts=1, bn_mode="eval")
        # state
        self.checks: list[Check] = []
        self.val_robust: list[float] = []
        self.events: list[dict[str, Any]] = []
        self.rollbacks = 0
        self.applied: list[dict] = []
        self.ro_declared = False
        self.co_active = False
        self.snapshot: dict[str, Any] | None = None
        self.check_seconds = 0.0
        self._signals: dict[str, list[float]] = {}

    # -- hooks ---------------------------------------------------------------------------------------
    def on_batch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        for key in SIGNAL_KEYS:
            if key in logs:
                self._signals.setdefault(key, []).append(float(logs[key]))
        every = self.every or trainer.steps_per_epoch
        if trainer.step % every == 0:
            self.check(trainer)

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if "val_robust_acc" not in metrics:
            return
        self.val_robust.append(metrics["val_robust_acc"])
        evidence = detect_robust_overfitting(self.val_robust, self.ro)
        if evidence is not None and not self.ro_declared:
            self.ro_declared = True
            self._declare(trainer, "robust_overfitting", evidence,
                          f"robust overfitting: validation robust accuracy {evidence['val_robust_acc']:.3f} has stayed "
                          f"more than {self.ro.margin:.3f} below its best {evidence['best_val_robust_acc']:.3f} "
                          f"(epoch {evidence['best_epoch']}) for {self.ro.patience} epochs; best.pt holds the best model")
            if self.action == "stop":
                trainer.should_stop = True

    def on_checkpoint_loaded(self, trainer: "Trainer") -> None:
        for remedy in self.applied:
            self._apply_remedy(trainer, remedy)

    # -- the check -----------------------------------------------------------------------------------
    def _measure(self, trainer: "Trainer", x: Tensor, y: Tensor, factor: float = 1.0) -> dict[str, float]:
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        attacks = {"fgsm": self.fgsm, "pgd": self.pgd}
        if factor < 1.0:
            attacks = {k: scaled_attack(a, factor) for k, a in attacks.items()}
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
        if self.train_batch:
            xt, yt = next(iter(trainer.train_loader.iterate(trainer.epoch)))
            tacc = self._measure(trainer, xt, yt, factor)
            signals.update({f"train_{k}": v for k, v in tacc.items()})
        return Check(trainer.step, trainer.epoch, acc["clean"], acc["fgsm"], acc["pgd"], signals,
                     eps=self.threat.eps * factor)

    def check(self, trainer: "Trainer") -> Check:
        """Run one check, decide, act; returns the check."""
        t0 = time.perf_counter()
        decided = None
        if trainer.dist.is_main:  # distributed: measured and decided once, on rank 0, and broadcast
            chk = self._new_check(trainer)
            decided = (chk, detect_catastrophic([*self.checks, chk], self.co))
        self._signals = {}
        chk, evidence = broadcast_object(decided)
        signals = chk.signals
        self.checks.append(chk)
        self.check_seconds += time.perf_counter() - t0
        trainer.emit({"kind": "monitor_check", "eps": chk.eps, "clean_acc": chk.clean, "fgsm_acc": chk.fgsm, "pgd_acc": chk.pgd,
                      **{f"signal/{k}": v for k, v in signals.items()}, "check_seconds": time.perf_counter() - t0})
        if evidence is None:
            self.co_active = False
            if self.action == "rollback":
                self._take_snapshot(trainer)
            return chk
        if self.co_active:  # already declared (warn): one event per episode, not one per check
            return chk
        self.co_active = self.action == "warn"
        if evidence["rule"] == "pgd_drop":
            what = f"PGD accuracy on the held-out check batch fell from {evidence['best_pgd_acc']:.3f} to "
        else:
            what = f"FGSM accuracy exceeds PGD accuracy on the held-out check batch by {evidence['fgsm_pgd_gap']:.3f}; PGD accuracy is "
        self._declare(trainer, "catastrophic_overfitting", evidence,
                      f"catastrophic overfitting: {what}{evidence['pgd_acc']:.3f} while FGSM accuracy is "
                      f"{evidence['fgsm_acc']:.3f} and clean accuracy {evidence['clean_acc']:.3f}")
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
        self.snapshot = {
            "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
            "loss_terms": {t.name: copy.deepcopy(t.state_dict()) for t in trainer.loss_terms},
            "n_checks": len(self.checks),
            "step": trainer.step,
        }

    def _rollback(self, trainer: "Trainer") -> None:
        if self.rollbacks >= self.max_rollbacks or self.snapshot is None:
            reason = "no healthy check to roll back to" if self.snapshot is None else f"{self.rollbacks} rollbacks done"
            self._declare(trainer, "give_up", {"rollbacks": self.rollbacks},
                          f"monitor gives up ({reason}); training stops, best.pt holds the validation-best model")
            trainer.should_stop = True
            return
        snap = self.snapshot
        trainer.model.load_state_dict(snap["model"])
        # a copy: Optimizer.load_state_dict keeps the given tensors, and later steps update them in place
        trainer.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        for term in trainer.loss_terms:
            if term.name in snap["loss_terms"]:
                term.load_state_dict(copy.deepcopy(snap["loss_terms"][term.name]))
        del self.checks[snap["n_checks"]:]
        self.rollbacks += 1
        self.applied.append(dict(self.remedy))
        self._apply_remedy(trainer, self.remedy)
        self._declare(trainer, "rollback", {"to_step": snap["step"], "rollbacks": self.rollbacks},
                      f"rolled back to the weights of step {snap['step']} and applied the remedy {self.remedy}")

    def _apply_remedy(self, trainer: "Trainer", remedy: dict) -> None:
        opts = {k: v for k, v in remedy.items() if k not in ("kind", "name")}
        kind = remedy["kind"]
        if kind == "lr":
            trainer.lr_scale *= float(opts.get("factor", 0.5))
        elif kind == "attack":
            old = trainer.attack
            trainer.attack = build_attack(remedy["name"], old.threat, bn_mode=old.bn_mode, amp_dtype=old.amp_dtype,
                                          **opts)
        elif kind == "regulariser":
            from ..regularisers import build_regulariser

            if not any(t.name == remedy["name"] for t in trainer.loss_terms):
                trainer.loss_terms.append(build_regulariser(remedy["name"], self.threat, **opts))

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "checks": [c.as_dict() for c in self.checks], "val_robust": list(self.val_robust),
            "events": list(self.events), "rollbacks": self.rollbacks, "applied": list(self.applied),
            "ro_declared": self.ro_declared, "co_active": self.co_active, "snapshot": self.snapshot, "check_seconds": self.check_seconds,
            "signals": {k: list(v) for k, v in self._signals.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checks = [Check(**c) for c in state["checks"]]
        self.val_robust = list(state["val_robust"])
        self.events = list(state["events"])
        self.rollbacks = int(state["rollbacks"])
        self.applied = list(state["applied"])
        self.ro_declared = bool(state["ro_declared"])
        self.co_active = bool(state["co_active"])
        self.snapshot = state["snapshot"]
        self.check_seconds = float(state["check_seconds"])
        self._signals = {k: list(v) for k, v in state["signals"].items()}
