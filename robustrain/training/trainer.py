"""The Trainer: the only training loop in robustrain.

Per batch: [procedures select] → attack → [weight perturbation applied] → objective [weighted per example by the
procedures] + loss terms → backward → [procedures before the step] → step → [weights restored] → [procedures after
the step] → callbacks. Every method (FGSM-RS, N-FGSM, PGD-AT, ... plus regularisers, weight perturbation and
training procedures) is a composition of the parts this loop calls; no method has a loop of its own. Remedies
(:mod:`.remedies`) change the composition of a running training through :meth:`Trainer.apply`.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..attacks import Attack
from ..data import as_loader
from ..distributed import DistInfo, any_rank, barrier, current, gather_objects
from ..errors import CheckpointError, NonFiniteLossError
from ..evaluation import evaluate
from .callbacks import Callback
from .checkpoint import CHECKPOINT_VERSION, check_resumable, load_checkpoint, rng_state, save_atomic, set_rng_state
from .hooks import LossTerm, Procedure, StepContext, WeightPerturbation
from .objectives import CrossEntropy
from .compiled import compiled_objective
from .parallel import rank_seed, sync_step, sync_term_states, training_module
from .remedies import Remedy
from .schedules import LRSchedule, optimizer_momentum, set_momentum



class Trainer:
    """Adversarial training with one loop.

    Args:
        model: the classifier (inputs in [0,1], normalisation inside).
        attack: the training attack (its ``bn_mode`` follows the method's recipe).
        optimizer: a torch optimiser over ``model``'s parameters.
        schedule: learning rate per global step.
        train_loader: robustrain's ``BatchLoader`` / ``StreamLoader`` (``iterate(epoch, start_batch)`` and ``len()``),
            or any re-iterable of ``(x, y)`` batches with a ``len()``, e.g. a ``torch.utils.data.DataLoader`` (x float
            in [0, 1] or uint8, no Normalize transform: :func:`robustrain.data.as_loader`). Exact resume needs
            robustrain's loaders; for another iterable a mid-epoch resume skips the batches already trained on in a
            new pass (the same ones only if the iterable repeats its order) and warns.
        epochs: number of epochs.
        val_loader: held-out validation batches (a loader or an iterable like ``train_loader``), evaluated after
            each epoch.
        val_attack: the validation attack (eval mode), e.g. PGD-10; None validates clean accuracy only.
        extra_val_attacks: more validation attacks by name (e.g. ``{"fgsm": ...}``), reported as ``val_<name>_acc``.
        objective: the main loss (cross-entropy with optional label smoothing by default).
        loss_terms: regularisers added to the loss.
        weight_perturbation: optional context the optimiser step runs in (AWP, RWP, LAP).
        procedures: training procedures hooked into the loop (:class:`~.hooks.Procedure`: batch selection,
            per-example loss weights, before / after the optimiser step, epoch start / end), in list order; the loss
            terms they provide (``Procedure.loss_terms``) are appended to ``loss_terms``.
        callbacks: loggers, checkpointer, monitor.
        grad_clip: max global gradient norm, or None.
        amp_dtype: autocast dtype for the training forward/backward (e.g. torch.bfloat16), or None.
        eps_warmup_steps: ramp the training attack's radius and step linearly from 0 to their full values over
            this many steps (MNIST and SVHN recipes need it; ``Attack.scaled``); the step context carries the scaled
            threat model, so loss terms that draw points in the ε-ball (ELLE's triplets, GradAlign's η) use the
            radius the attack used. Validation always uses the full radius.
        seed: seeds the trainer's generator (attack noise, regulariser draws); the global RNGs (dropout) are
            the caller's to seed, and are saved and restored with every checkpoint.
        config: plain-data config stored in every checkpoint.
        model_info: what rebuilding the model needs besides the config (number of classes, input shape, mean and
            std of the training data), stored in every checkpoint (``robustrain.load_model`` reads it).
        compile: run the training step through ``torch.compile``: every training forward and its backward
            (:class:`~.compiled.CompiledModule`), and the main forward with the loss as one graph where the objective
            allows (:class:`~.compiled.CompiledObjective`, cross-entropy). Falls back to eager, with one warning,
            where compiling fails; attacks, validation and checkpoints use the eager model. ``build_trainer`` turns
            it on by default on CUDA (``train.compile: null``).
        dist: the process group this trainer is part of (default: the current one, see
            :mod:`robustrain.distributed`). With more than one process the training forward/backward runs through
            ``DistributedDataParallel`` (the attack runs on the plain model, on this rank's shard, with the
            rank's own generator), logs and loss-term inputs are averaged over ranks, callbacks run on rank 0
            only unless they set ``every_rank``, and checkpoints (written by rank 0) hold every rank's RNGs.
    """

    def __init__(
        self,
        model: nn.Module,
        attack: Attack,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        train_loader: Any,
        *,
        epochs: int,
        val_loader: Any = None,
        val_attack: Attack | None = None,
        extra_val_attacks: dict[str, Attack] | None = None,
        objective: Any = None,
        loss_terms: Sequence[LossTerm] = (),
        weight_perturbation: WeightPerturbation | None = None,
        procedures: Sequence[Procedure] = (),
        callbacks: Sequence[Callback] = (),
        grad_clip: float | None = None,
        amp_dtype: torch.dtype | None = None,
        eps_warmup_steps: int = 0,
        seed: int = 0,
        config: dict | None = None,
        model_info: dict | None = None,
        compile: bool = False,
        dist: DistInfo | None = None,
    ):
        self.model = model
        self.attack = attack
        self.optimizer = optimizer
        # cycle_momentum: None (CyclicLR's default) is decided here, against the optimiser
        self.schedule = schedule.resolve(optimizer) if hasattr(schedule, "resolve") else schedule
        self.device = next(model.parameters()).device
        self.train_loader = as_loader(train_loader, self.device)  # a DataLoader or any iterable of (x, y) batches
        self.val_loader = as_loader(val_loader, self.device)
        self.val_attack = val_attack
        self.extra_val_attacks = dict(extra_val_attacks or {})
        self.objective = objective or CrossEntropy()
        self.weight_perturbation = weight_perturbation
        self.procedures = list(procedures)
        self.loss_terms = list(loss_terms) + [t for p in self.procedures for t in p.loss_terms()]
        self.callbacks = list(callbacks)
        self.epochs = int(epochs)
        self.grad_clip = grad_clip
        self.amp_dtype = amp_dtype
        self.eps_warmup_steps = int(eps_warmup_steps)
        self.seed = int(seed)
        self.config = config or {}
        self.model_info = dict(model_info or {})
        self.dist = dist or current()
        self.generator = torch.Generator(device=self.device).manual_seed(rank_seed(self.seed, self.dist.rank))
        self.train_model = training_module(model, self.dist, compile=compile)  # the model itself, or wrapped
        # the main forward and loss in one compiled graph (cross-entropy); None: the objective as it is
        self._compiled_objective = compiled_objective(self.objective, self.train_model) if compile else None
        # progress
        self.epoch = 0  # finished epochs
        self.batch_in_epoch = 0  # finished batches of the current epoch
        self.step = 0  # finished optimiser steps
        self.history: list[dict[str, float]] = []
        self.should_stop = False
        self.lr_scale = 1.0  # a remedy (e.g. the overfitting monitor's) may lower the scheduled lr
        self.remedies: list[dict[str, Any]] = []  # the specs of the remedies applied (in this process), in order
        self.val_result: Any = None  # the last validation's per-example flags (EvalResult; the monitor reads them)
        for proc in self.procedures:
            proc.setup(epochs=self.epochs, steps_per_epoch=self.steps_per_epoch)

    # -- properties ----------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def eps_factor(self) -> float:
        """The fraction of the full radius the next training step attacks with (ε warm-up)."""
        if self.step >= self.eps_warmup_steps:
            return 1.0
        return (self.step + 1) / self.eps_warmup_steps

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None) -> list[dict[str, float]]:
        """Train until ``epochs`` are done or a callback requests a stop; returns the epoch history."""
        if resume is not None:
            self.load_checkpoint(resume)
        try:
            self._call("on_fit_start")
            while self.epoch < self.epochs and not self.should_stop:
                self._train_epoch()
                if self.batch_in_epoch < self.steps_per_epoch:
                    break  # stopped mid-epoch
                metrics = self._end_epoch()
                self._call("on_epoch_end", metrics)
                if self.dist.enabled:
                    self.should_stop = any_rank(self.should_stop)
            self._call("on_fit_end")
        except BaseException as exc:
            for cb in self._callbacks_here():
                cb.on_exception(self, exc)
            raise
        return self.history

    def _train_epoch(self) -> None:
        self._call("on_epoch_start", self.epoch)
        if self.batch_in_epoch == 0:  # not again when resuming mid-epoch: the checkpoint holds its effect
            for proc in self.procedures:
                proc.on_epoch_start(self.model, self.optimizer, self.epoch)
        self.model.train()
        wants_indices = getattr(self.attack, "needs_indices", False)  # attacks with per-example state (fgsm_mep)
        batches = self.train_loader.iterate(self.epoch, start_batch=self.batch_in_epoch,
                                            **({"with_indices": True} if wants_indices else {}))
        for x, y, *indices in batches:
            logs = self.train_step(x, y, indices=indices[0] if indices else None)
            self.step += 1
            self.batch_in_epoch += 1
            self._call("on_batch_end", logs)
            if self.dist.enabled:
                self.should_stop = any_rank(self.should_stop)  # e.g. requested by a rank-0-only callback
            if self.should_stop:
                return

    def _end_epoch(self) -> dict[str, float]:
        for proc in self.procedures:  # before validation: it sees the weights training continues from
            proc.on_epoch_end(self.model, self.optimizer, self.epoch)
        metrics = {"epoch": self.epoch + 1, "lr": self.schedule(self.step)}
        metrics.update(self.validate())
        self._call("on_validation_end", metrics)
        for term in self.loss_terms:
            if _takes_model(term.on_epoch_end):
                term.on_epoch_end(self.epoch, model=self.model)
            else:  # a term written against the older hook, on_epoch_end(self, epoch)
                term.on_epoch_end(self.epoch)
        if self.dist.enabled:
            sync_term_states(self.loss_terms, self.device)  # rank 0's, so every rank continues alike
        self.epoch += 1
        self.batch_in_epoch = 0
        self.history.append(metrics)
        return metrics

    def train_step(self, x: Tensor, y: Tensor, indices: Tensor | None = None) -> dict[str, float]:
        """One step: attack, objective and terms (inside the weight perturbation), backward, update.

        ``indices``: the dataset indices of the batch's examples, passed on (with the epoch and the training set's
        size) to an attack that keeps per-example state (``needs_indices``, e.g. ``fgsm_mep``)."""
        t0 = time.perf_counter()
        lr = self.schedule(self.step) * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        momentum = self.schedule.momentum(self.step) if hasattr(self.schedule, "momentum") else None
        if momentum is not None:  # cyclic with cycle_momentum (CyclicLR): SGD momentum or Adam beta1
            set_momentum(self.optimizer, momentum)
        momentum = optimizer_momentum(self.optimizer)  # logged: the momentum (beta1) this step runs with
        attack = self._attack_for_this_batch()
        if self.eps_factor() < 1.0:
            attack = attack.scaled(self.eps_factor())
        x, y, indices = self._select(x, y, indices)
        per_example = {} if indices is None else {"indices": indices, "epoch": self.epoch,
                                                  "num_examples": len(self.train_loader.dataset)}
        result = attack(self.model, x, y, generator=self.generator, **per_example)
        self.model.train()
        ctx = StepContext(self.train_model, x, y, result, self.epoch, self.step, self.generator, self.autocast,
                          optimizer=self.optimizer, threat=attack.threat)

        objective = self._step_objective()

        def loss_fn(per_example: bool = False) -> Tensor:
            out = objective(ctx)
            return out["per_example"] if per_example else out["loss"]

        wp = self.weight_perturbation.applied(ctx, loss_fn) if self.weight_perturbation else contextlib.nullcontext()
        with wp:
            out = objective(ctx)
            loss = self._weighted(ctx, out)
            logs: dict[str, float] = {"loss_main": loss.item()}
            term_outs = []
            for term in self.loss_terms:
                t_out = term(ctx)
                term_outs.append(t_out)
                loss = loss + t_out["loss"]
                for k, v in t_out.items():
                    logs[f"{term.name}/{k}"] = float(v.detach()) if torch.is_tensor(v) else float(v)
            synced = sync_step(ctx, loss, logs, self.loss_terms, term_outs, self.dist)  # ranks see global values
            logs = synced.logs
            if not synced.finite:
                raise NonFiniteLossError(
                    f"the training loss became {synced.loss} at epoch {self.epoch + 1}, step {self.step + 1} "
                    f"(main loss {logs['loss_main']:.4g}; terms: "
                    f"{ {k: v for k, v in logs.items() if '/' in k} }). The weights were not updated and "
                    "checkpoints already written are intact; lower the learning rate or a regulariser weight, "
                    "or enable grad_clip."
                )
            self.optimizer.zero_grad(set_to_none=True)
            synced.backward_loss.backward()
            if self.grad_clip:
                logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
            for proc in self.procedures:
                proc.before_step(self.model, self.optimizer, ctx)
            self.optimizer.step()
            self._extra_optimizer_steps()
        for term, t_out in zip(self.loss_terms, synced.term_outs):
            term.after_step(ctx, t_out)
        for proc in self.procedures:
            proc.after_step(self.model, self.optimizer, ctx)
        dt = time.perf_counter() - t0
        logs["eps"] = attack.threat.eps
        logs.update({"loss": synced.loss, "train_adv_acc": synced.adv_acc, "lr": lr,
                     "momentum": momentum,
                     "images_per_s": synced.examples / dt})
        return logs

    def _step_objective(self) -> Any:
        """The objective this step calls: its compiled form (``compile``), unless ``self.objective`` was replaced
        since the Trainer was built."""
        c = self._compiled_objective
        return c if c is not None and getattr(c, "objective", c) is self.objective else self.objective

    def _select(self, x: Tensor, y: Tensor, indices: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The batch the procedures make of it before the attack: each procedure in order selects
        (``Procedure.select``) and then replaces inputs (``Procedure.augment``)."""
        for proc in self.procedures:
            x, y, indices = self._keep(proc, x, y, indices)
            new_x = proc.augment(self.model, x, y, epoch=self.epoch, step=self.step, generator=self.generator)
            if new_x is not None:
                if new_x.shape != x.shape:
                    raise ValueError(f"training procedure {proc.name!r}: augment returned inputs of shape "
                                     f"{tuple(new_x.shape)} for a batch of shape {tuple(x.shape)}.")
                x = new_x.detach()
        return x, y, indices

    def _keep(self, proc: Procedure, x: Tensor, y: Tensor,
              indices: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The examples ``proc`` keeps (``Procedure.select``)."""
        keep = proc.select(self.model, x, y, epoch=self.epoch, step=self.step, generator=self.generator)
        if keep is None:
            return x, y, indices
        if keep.dtype == torch.bool:
            keep = keep.nonzero().flatten()
        if keep.numel() == 0:
            raise ValueError(f"training procedure {proc.name!r} kept no example of the batch at step "
                             f"{self.step + 1}; a procedure must keep at least one (or weight examples by 0).")
        return x[keep], y[keep], indices[keep.to(indices.device)] if indices is not None else None

    def _weighted(self, ctx: StepContext, out: dict[str, Any]) -> Tensor:
        """The main loss: the objective's mean, or ``mean(w · per_example)`` with the procedures' weights."""
        weights = None
        for proc in self.procedures:
            w = proc.weights(ctx, out["per_example"])
            if w is not None:
                weights = w if weights is None else weights * w
        if weights is None:
            return out["loss"]
        return (weights.to(out["per_example"].dtype) * out["per_example"]).mean()

    def apply(self, remedy: Remedy) -> None:
        """Apply a remedy (:mod:`.remedies`): the one place a running training's composition changes
        (learning-rate scale, training attack, loss terms). The overfitting monitor decides and calls this."""
        self.lr_scale = float(remedy.lr_scale(self.lr_scale))
        self.attack = remedy.attack(self.attack)
        self.loss_terms[:] = remedy.loss_terms(self.loss_terms)
        self.remedies.append(remedy.spec())

    def _attack_for_this_batch(self) -> Attack:
        """The training attack, or on the first batch of an epoch after the first a copy in the attack's
        ``first_batch_bn_mode`` (the AWP / RWP loops attack that batch in the eval mode their end-of-epoch
        evaluation left the model in; a model in eval mode updates no BatchNorm statistics)."""
        mode = getattr(self.attack, "first_batch_bn_mode", None)
        if mode is None or mode == self.attack.bn_mode or self.epoch == 0 or self.batch_in_epoch != 0:
            return self.attack
        attack = copy.copy(self.attack)
        attack.bn_mode = mode
        if mode == "eval":
            attack.update_bn_stats = False
        return attack

    def _extra_optimizer_steps(self) -> None:
        """More optimiser steps with this batch's gradients when a loss term asks for them
        (``LossTerm.optimizer_steps``, 2 for ELLE / ELLE-A with ``behaviour: code``), as the official ELLE loop
        (LIONS-EPFL/ELLE core/utils/train.py@0f16c0e): ``optimizer.step(); scheduler.step(); optimizer.step()``.
        Extra step k therefore runs with the learning rate the schedule gives step ``self.step + k`` (the official
        per-iteration scheduler has stepped once in between; the lr of the next batch is set again as usual), at the
        weights the previous step left: SGD adds weight decay and updates the momentum buffer again. With
        ``grad_clip`` the gradients are clipped again before each extra step, as the official loop does. The
        learning rate logged for the batch is that of its first step."""
        steps = max((int(getattr(t, "optimizer_steps", 1)) for t in self.loss_terms), default=1)
        for k in range(1, steps):
            lr = self.schedule(self.step + k) * self.lr_scale
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            momentum = self.schedule.momentum(self.step + k) if hasattr(self.schedule, "momentum") else None
            if momentum is not None:  # CyclicLR's scheduler.step() in between also moved the momentum
                set_momentum(self.optimizer, momentum)
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()

    def validate(self) -> dict[str, float]:
        """Clean and robust accuracy on the held-out split, model in eval mode, fixed random starts."""
        if self.val_loader is None:
            return {}
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003)
        attacks = {"robust": self.val_attack} if self.val_attack is not None else {}
        attacks.update(self.extra_val_attacks)  # after "robust": its random starts stay those of earlier runs
        res = evaluate(self.eval_model("validation"), self.val_loader.iterate(0), attacks, generator=gen,
                       amp_dtype=self.amp_dtype, distributed=self.dist.enabled)
        self.val_result = res  # per-example flags, same images in the same order every epoch
        return {f"val_{k}_acc": v for k, v in res.accuracy().items()}

    def eval_model(self, purpose: str) -> nn.Module:
        """The model validation (``purpose="validation"``) or the final evaluation (``"final"``) uses: a procedure's
        (:meth:`~.hooks.Procedure.eval_model`, e.g. the EMA or SWA average) or else the training model."""
        return self._eval_source(purpose)[1]

    def _eval_source(self, purpose: str) -> tuple[str | None, nn.Module]:
        """(the name of the procedure that provides the model to evaluate, or None; that model)."""
        for proc in self.procedures:
            model = proc.eval_model(self.model, purpose)
            if model is not None:
                return proc.name, model
        return None, self.model

    def emit(self, event: dict[str, Any]) -> None:
        """Announce an event (e.g. catastrophic overfitting declared) to every callback's ``on_event``."""
        event = {"epoch": self.epoch, "step": self.step, **event}
        self._call("on_event", event)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self._callbacks_here():
            getattr(cb, hook)(self, *args)

    def _callbacks_here(self) -> list[Callback]:
        """Every callback on rank 0 (or a single process); on other ranks those that set ``every_rank``."""
        return self.callbacks if self.dist.is_main else [cb for cb in self.callbacks if cb.every_rank]

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (in a process group every rank must call it: it gathers every rank's RNGs).

        ``model`` holds the training weights (a resume continues from them). Where a procedure provides the model
        to evaluate (weight averaging), ``eval_model`` holds that model's state dict and ``eval_weights`` names the
        procedure; the final test evaluation and ``robustrain eval`` use it. Its tensors are the procedure's own,
        so ``torch.save`` writes them once."""
        source, final = self._eval_source("final")
        return {
            **({"eval_model": final.state_dict(), "eval_weights": source} if source is not None else {}),
            "version": CHECKPOINT_VERSION,
            "trainer": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                        "history": self.history, "seed": self.seed},
            "rng": rng_state(self.generator),
            **({"rng_ranks": gather_objects(rng_state(self.generator))} if self.dist.enabled else {}),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            **self.training_state(),
            "config": self.config,
            **({"model_info": self.model_info} if self.model_info else {}),
        }

    def training_state(self) -> dict[str, Any]:
        """The state of what is being trained, as a checkpoint holds it: model, optimiser, loss terms, weight
        perturbation, procedures and the training attack (``fgsm_mep``'s per-example buffers). Not progress, RNGs
        or callbacks. The overfitting monitor's rollback snapshot is a copy of it. The tensors are the live ones:
        ``copy.deepcopy`` to keep them."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss_terms": {t.name: t.state_dict() for t in self.loss_terms},
            "weight_perturbation": self.weight_perturbation.state_dict() if self.weight_perturbation else {},
            **({"procedures": [p.state_dict() for p in self.procedures]} if self.procedures else {}),
            **({"attack": self.attack.state_dict(), "attack_name": self.attack.name}
               if hasattr(self.attack, "state_dict") else {}),
        }

    def load_training_state(self, state: dict[str, Any], *, source: str = "the snapshot", strict: bool = True,
                            keep: bool = False) -> None:
        """Restore :meth:`training_state` (from a checkpoint or a rollback snapshot). ``strict``: a part this run
        has and ``state`` lacks (procedures, the attack's state) is an error; not strict (a rollback to a snapshot
        taken before a remedy changed the composition): such parts are left as they are, and the attack's state is
        restored only into an attack of the same name. ``keep``: ``state`` is kept by the caller (a snapshot restored
        again later): the parts whose loaders hold on to the given tensors (optimiser, loss terms, procedures) get
        copies, so training does not write into it."""
        own = copy.deepcopy if keep else (lambda obj: obj)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(
                f"{source} does not fit this model ({str(e)[:300]}); resume with the config the run was started with "
                "(config.yaml in the run folder)."
            ) from e
        try:
            self.optimizer.load_state_dict(own(state["optimizer"]))  # it keeps the tensors, later steps update them
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"{source} holds an optimiser state that does not fit this optimiser ({str(e)[:200]}); resume with "
                "the config the run was started with (config.yaml in the run folder).") from e
        for term in self.loss_terms:
            if term.name in state["loss_terms"]:
                term.load_state_dict(own(state["loss_terms"][term.name]))
        if self.weight_perturbation is not None:
            self.weight_perturbation.load_state_dict(own(state["weight_perturbation"]))
        if self.procedures:
            states = state.get("procedures", [])
            if len(states) == len(self.procedures):
                for proc, s in zip(self.procedures, states):
                    proc.load_state_dict(own(s))
            elif strict:
                raise CheckpointError(
                    f"{source} holds the state of {len(states)} training procedure(s), this run has "
                    f"{len(self.procedures)} ({', '.join(p.name for p in self.procedures)}); resume with the config "
                    "the run was started with (config.yaml in the run folder).")
        if hasattr(self.attack, "load_state_dict"):  # an attack with state (fgsm_mep's per-example buffers)
            if "attack" in state and state.get("attack_name", self.attack.name) == self.attack.name:
                self.attack.load_state_dict(state["attack"])  # the attack copies what it keeps
            elif strict:
                raise CheckpointError(f"{source} holds no state for the {self.attack.name} attack, "
                                      "so the run cannot resume exactly; start it again.")

    def save_checkpoint(self, path: str | Path) -> None:
        """Write the checkpoint (in a process group: every rank calls this, rank 0 writes, all wait for it)."""
        state = self.state_dict()
        if self.dist.is_main:
            save_atomic(state, path)
        barrier()

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimiser, progress, callbacks, terms and every RNG from ``path``."""
        ckpt = load_checkpoint(path, map_location=self.device)
        check_resumable(ckpt, path)  # the format version and every part a resume needs
        t = ckpt["trainer"]
        self.epoch, self.batch_in_epoch, self.step = t["epoch"], t["batch_in_epoch"], t["step"]
        self.history = list(t["history"])
        ranks = ckpt.get("rng_ranks", [])  # a distributed run's: resumed with as many processes, each gets its own
        if len(ranks) == self.dist.world_size and self.dist.enabled:
            set_rng_state(ranks[self.dist.rank], self.generator)
        elif self.dist.is_main:
            set_rng_state(ckpt["rng"], self.generator)  # other ranks of a changed world keep their fresh RNGs
        for cb in self.callbacks:
            if cb.state_key in ckpt["callbacks"]:
                cb.load_state_dict(ckpt["callbacks"][cb.state_key])
        for cb in self.callbacks:  # may change the composition (e.g. re-apply a monitor's remedies)
            cb.on_checkpoint_loaded(self)
        # after the remedies: a term or attack a remedy brought in gets its state too
        self.load_training_state(ckpt, source=f"checkpoint {str(path)!r}")


def _takes_model(hook: Any) -> bool:
    """Whether a loss term's ``on_epoch_end`` accepts the ``model`` keyword (the newer signature)."""
    try:
        params = inspect.signature(hook).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False
    return "model" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
