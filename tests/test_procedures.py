"""The plugin surface beyond a loss term: training procedures (hooks.Procedure) and remedies (Trainer.apply).

Toy procedures registered here prove that each hook point runs at its moment with the Trainer's own model,
optimiser and epoch; that a stateful procedure resumes bit-identically; that remedies change the composition
through ``trainer.apply``; and that wrong procedure names and options are config errors naming the choices.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import KillAt
from robustrain.build import build_trainer
from robustrain.config import load_config
from robustrain.errors import ConfigError, UnknownNameError
from robustrain.training import Callback, LossTerm
from robustrain.training.hooks import Procedure
from robustrain.training.procedures import PROCEDURES, build_procedure, register_procedure
from robustrain.training.remedies import AttackRemedy, LRRemedy, RegulariserRemedy, build_remedy

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
# 256 training images in batches of 64: 4 steps per epoch
TINY = ["train.progress=false", "data.train_subset=256", "data.val_size=100", "data.batch_size=64",
        "validation.attack={name: pgd, steps: 2, restarts: 1}", "eval.attack={name: pgd, steps: 2, restarts: 1}"]


def tiny(tmp_path: Path, *extra: str, run: str = "run"):
    cfg = load_config(QUICK, [*TINY, f"out_dir={tmp_path}", *extra])
    trainer, _ = build_trainer(cfg, tmp_path / run)
    return trainer


def last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]


# -- toy procedures --------------------------------------------------------------------------------------
@register_procedure
class ToyRecord(Procedure):
    """Records every hook call with what it was given; keeps the first ``keep`` examples of each batch and weights
    the main loss by ``weight``."""

    name = "toy_record"

    def __init__(self, *, keep: int | None = None, weight: float | None = None):
        self.keep, self.weight = keep, weight
        self.log: list[tuple] = []

    def on_epoch_start(self, model, optimizer, epoch):
        self.log.append(("epoch_start", epoch, model, optimizer))

    def select(self, model, x, y, *, epoch, step, generator):
        self.log.append(("select", epoch, step, len(x), model.training))
        return None if self.keep is None else torch.arange(self.keep, device=x.device)

    def weights(self, ctx, per_example):
        self.log.append(("weights", ctx.epoch, ctx.step, len(ctx.x), tuple(per_example.shape)))
        return None if self.weight is None else torch.full_like(per_example, self.weight)

    def before_step(self, model, optimizer, ctx):
        p = last_linear(model).weight
        self.log.append(("before_step", ctx.epoch, ctx.step, model, optimizer, p.grad is not None, p.detach().clone()))

    def after_step(self, model, optimizer, ctx):
        self.log.append(("after_step", ctx.epoch, ctx.step, model, optimizer, last_linear(model).weight.detach().clone()))

    def on_epoch_end(self, model, optimizer, epoch):
        self.log.append(("epoch_end", epoch, model, optimizer))


@register_procedure
class ToyFlip(Procedure):
    """Replaces the inputs by their mirror images (an augmentation before the attack, as DOM_DA's)."""

    name = "toy_flip"

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def augment(self, model, x, y, *, epoch, step, generator):
        return x.flip(-1)

    def weights(self, ctx, per_example):
        self.seen.append(ctx.x.clone())
        return None


@register_procedure
class ToyFreezeLast(Procedure):
    """Zeroes the last layer's gradient before the optimiser step (a per-layer gradient mask, as CURE's)."""

    name = "toy_freeze_last"

    def before_step(self, model, optimizer, ctx):
        for p in last_linear(model).parameters():
            p.grad.zero_()


@register_procedure
class ToyEMAForget(Procedure):
    """Stateful: an EMA of the weights after each step; at epoch end the weights move half-way to the EMA
    (consolidation); at epoch start the last layer's bias is redrawn from the procedure's own generator
    (forgetting). Both change the weights, so a resume without this state could not be exact."""

    name = "toy_ema_forget"

    def __init__(self, *, decay: float = 0.5, seed: int = 0):
        self.decay = decay
        self.ema: dict[str, torch.Tensor] = {}
        self.gen = torch.Generator().manual_seed(seed)
        self.epochs_seen = 0

    def on_epoch_start(self, model, optimizer, epoch):
        bias = last_linear(model).bias
        with torch.no_grad():
            bias.copy_(torch.randn(bias.shape, generator=self.gen).to(bias) * 0.01)

    @torch.no_grad()
    def after_step(self, model, optimizer, ctx):
        for k, v in model.state_dict().items():
            if k not in self.ema:
                self.ema[k] = v.detach().clone()
            elif v.is_floating_point():
                self.ema[k].mul_(self.decay).add_(v, alpha=1 - self.decay)

    @torch.no_grad()
    def on_epoch_end(self, model, optimizer, epoch):
        self.epochs_seen += 1
        for k, p in model.named_parameters():
            p.mul_(0.5).add_(self.ema[k], alpha=0.5)

    def state_dict(self):
        return {"ema": {k: v.clone() for k, v in self.ema.items()}, "gen": self.gen.get_state(),
                "epochs_seen": self.epochs_seen}

    def load_state_dict(self, state):
        self.ema = {k: v.clone() for k, v in state["ema"].items()}
        self.gen.set_state(state["gen"])
        self.epochs_seen = state["epochs_seen"]


class ValidationMark(Callback):
    def __init__(self, log):
        self.log = log

    def on_validation_end(self, trainer, metrics):
        self.log.append(("validation", trainer.epoch))


# -- hook points -----------------------------------------------------------------------------------------
def test_each_hook_runs_at_its_moment_with_the_trainers_objects(tmp_path):
    trainer = tiny(tmp_path, "train.epochs=2", "procedures=[{name: toy_record, keep: 48}]")
    proc = trainer.procedures[0]
    assert isinstance(proc, ToyRecord) and proc.keep == 48
    trainer.callbacks.append(ValidationMark(proc.log))
    trainer.fit()
    assert trainer.steps_per_epoch == 4
    kinds = [e[0] for e in proc.log]
    per_step = ["select", "weights", "before_step", "after_step"]
    epoch = ["epoch_start", *per_step * 4, "epoch_end", "validation"]
    assert kinds == epoch * 2
    for e in proc.log:
        if e[0] in ("epoch_start", "epoch_end"):
            assert e[2] is trainer.model and e[3] is trainer.optimizer
        if e[0] in ("before_step", "after_step"):
            assert e[3] is trainer.model and e[4] is trainer.optimizer
    starts = [e for e in proc.log if e[0] in ("epoch_start", "epoch_end")]
    assert [(e[0], e[1]) for e in starts] == [("epoch_start", 0), ("epoch_end", 0), ("epoch_start", 1), ("epoch_end", 1)]
    steps = [e for e in proc.log if e[0] == "select"]
    assert [(e[1], e[2]) for e in steps] == [(s // 4, s) for s in range(8)]
    assert all(e[3] == 64 and e[4] for e in steps)  # the full batch, model in train mode
    weights = [e for e in proc.log if e[0] == "weights"]
    assert all(e[3] == 48 and e[4] == (48,) for e in weights)  # the selection reached the attack and the loss
    before = [e for e in proc.log if e[0] == "before_step"]
    after = [e for e in proc.log if e[0] == "after_step"]
    for b, a in zip(before, after):
        assert b[2] == a[2] and b[5]  # same step; gradients there before the step
        if b[2] > 0:  # (the cyclic schedule's lr is 0 at step 0)
            assert not torch.equal(b[6], a[5])  # the optimiser stepped in between


def test_augment_replaces_the_inputs_before_the_attack(tmp_path):
    trainer = tiny(tmp_path, "train.epochs=1", "procedures=[{name: toy_record, keep: 10}, toy_flip]")
    x, y = next(iter(trainer.train_loader.iterate(0)))
    trainer.train_step(x, y)
    assert torch.equal(trainer.procedures[1].seen[0], x[:10].flip(-1))  # selected by the first, then mirrored


def test_gradient_mask_before_the_step_freezes_the_last_layer(tmp_path):
    plain = tiny(tmp_path, "train.epochs=1", "optim.weight_decay=0", run="plain")
    frozen = tiny(tmp_path, "train.epochs=1", "optim.weight_decay=0", "procedures=[toy_freeze_last]", run="frozen")
    start = {k: v.clone() for k, v in frozen.model.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in plain.model.state_dict().items())  # same initialisation
    plain.fit()
    frozen.fit()
    head = last_linear(frozen.model)
    names = {id(p): k for k, p in frozen.model.named_parameters()}
    head_keys = {names[id(head.weight)], names[id(head.bias)]}
    after = frozen.model.state_dict()
    assert all(torch.equal(after[k], start[k]) for k in head_keys)
    assert all(not torch.equal(after[k], start[k]) for k, _ in frozen.model.named_parameters() if k not in head_keys)
    assert not torch.equal(plain.model.state_dict()[next(iter(head_keys))], start[next(iter(head_keys))])


def test_per_example_weights_scale_the_main_loss(tmp_path):
    plain = tiny(tmp_path, "train.epochs=1", run="plain")
    double = tiny(tmp_path, "train.epochs=1", "procedures=[{name: toy_record, weight: 2.0}]", run="double")
    x, y = next(iter(plain.train_loader.iterate(0)))
    a = plain.train_step(x, y)
    b = double.train_step(x, y)
    assert b["loss_main"] == pytest.approx(2 * a["loss_main"], rel=1e-6)
    assert b["train_adv_acc"] == a["train_adv_acc"]  # the same attack, the same forward


def test_a_stateful_procedure_resumes_bit_identically(tmp_path):
    extra = ["train.epochs=3", "train.checkpoint_every=3", "procedures=[{name: toy_ema_forget, decay: 0.7, seed: 5}]"]
    full = tiny(tmp_path, *extra, run="full")
    full.fit()
    killed = tiny(tmp_path, *extra, run="killed")
    killed.callbacks.append(KillAt(6))  # mid-epoch 2: the epoch-start forgetting must not run again on resume
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert killed.batch_in_epoch == 2
    torch.manual_seed(1234)
    resumed = tiny(tmp_path, *extra, run="killed")
    resumed.fit(resume=tmp_path / "killed" / "last.pt")
    assert resumed.step == full.step == 12
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.procedures[0].epochs_seen == full.procedures[0].epochs_seen == 3
    for k, v in full.procedures[0].ema.items():
        assert torch.equal(v, resumed.procedures[0].ema[k]), k
    assert resumed.history == full.history


def test_checkpoint_with_other_procedures_is_refused(tmp_path):
    from robustrain.errors import CheckpointError

    a = tiny(tmp_path, "train.epochs=1", "procedures=[toy_ema_forget]", run="a")
    a.save_checkpoint(tmp_path / "a.pt")
    b = tiny(tmp_path, "train.epochs=1", "procedures=[toy_ema_forget, toy_freeze_last]", run="b")
    with pytest.raises(CheckpointError, match="1 training procedure.*this run has 2"):
        b.load_checkpoint(tmp_path / "a.pt")


def test_loss_terms_get_the_model_at_epoch_end_and_old_terms_still_work(tmp_path):
    seen = []

    class New(LossTerm):
        name = "new"

        def __call__(self, ctx):
            return {"loss": torch.zeros((), device=ctx.x.device)}

        def on_epoch_end(self, epoch, model=None):
            seen.append(("new", epoch, model))

    class Old(New):
        name = "old"

        def on_epoch_end(self, epoch):  # the hook's signature before the model was passed
            seen.append(("old", epoch))

    trainer = tiny(tmp_path, "train.epochs=1")
    trainer.loss_terms += [New(), Old()]
    trainer.fit()
    assert seen == [("new", 0, trainer.model), ("old", 0)]


# -- config ----------------------------------------------------------------------------------------------
def test_bad_procedure_names_and_options_are_config_errors():
    with pytest.raises(ConfigError, match="procedures\\[0\\].name = 'toy_recrod'.*toy_record.*Did you mean 'toy_record'"):
        load_config(QUICK, ["procedures=[{name: toy_recrod}]"])
    with pytest.raises(ConfigError, match="procedures\\[1\\].kep.*Valid keys: name, keep, weight"):
        load_config(QUICK, ["procedures=[toy_freeze_last, {name: toy_record, kep: 3}]"])
    with pytest.raises(ConfigError, match="procedures: expected a list"):
        load_config(QUICK, ["procedures={name: toy_record}"])
    with pytest.raises(UnknownNameError, match="Did you mean 'toy_record'"):  # building by hand checks the same
        build_procedure({"name": "toy_recor"})
    cfg = load_config(QUICK, ["procedures=[toy_freeze_last, {name: toy_ema_forget, decay: 3/4}]"])
    assert cfg.procedures == [{"name": "toy_freeze_last"}, {"name": "toy_ema_forget", "decay": 0.75}]
    assert {"toy_record", "toy_freeze_last", "toy_ema_forget"} <= set(PROCEDURES)


def test_bad_remedies_are_config_errors():
    with pytest.raises(ConfigError, match="expected one of: attack, lr, regulariser.*Did you mean 'attack'"):
        load_config(QUICK, ["monitor.remedy={kind: atack, name: nfgsm}"])
    with pytest.raises(ConfigError, match="monitor.remedy.factr"):
        load_config(QUICK, ["monitor.remedy={kind: lr, factr: 0.5}"])
    assert load_config(QUICK, ["monitor.remedy={kind: lr, factor: 1/4}"]).monitor.remedy == {"kind": "lr", "factor": 0.25}


# -- remedies --------------------------------------------------------------------------------------------
def test_remedies_change_the_composition_through_trainer_apply(tmp_path):
    from robustrain.regularisers import build_regulariser

    trainer = tiny(tmp_path, "train.epochs=1", "attack={name: fgsm_rs, bn_mode: train, update_bn_stats: true}")
    threat = trainer.attack.threat
    trainer.apply(LRRemedy(factor=0.5))
    trainer.apply(build_remedy({"kind": "lr", "factor": 0.5}))
    assert trainer.lr_scale == 0.25
    trainer.apply(AttackRemedy(name="nfgsm"))
    assert trainer.attack.name == "nfgsm" and trainer.attack.bn_mode == "train" and trainer.attack.update_bn_stats
    terms = trainer.loss_terms
    remedy = RegulariserRemedy(name="elle_a", threat=threat, build_term=build_regulariser)
    trainer.apply(remedy)
    trainer.apply(remedy)  # a term of that name is kept, not added twice
    assert [t.name for t in trainer.loss_terms] == ["elle_a"] and trainer.loss_terms is terms
    assert trainer.remedies == [{"kind": "lr", "factor": 0.5}] * 2 + [{"kind": "attack", "name": "nfgsm"}] + \
        [{"kind": "regulariser", "name": "elle_a"}] * 2
    with pytest.raises(ConfigError, match="build_term"):
        build_remedy({"kind": "regulariser", "name": "elle_a"})


def test_the_built_monitor_holds_a_remedy_object(tmp_path):
    trainer = tiny(tmp_path, "train.epochs=1", "monitor.enabled=true", "monitor.action=rollback",
                   "monitor.remedy={kind: regulariser, name: elle_a}")
    monitor = next(cb for cb in trainer.callbacks if type(cb).__name__ == "OverfitMonitor")
    assert isinstance(monitor.remedy, RegulariserRemedy)
    trainer.apply(monitor.remedy)
    assert [t.name for t in trainer.loss_terms] == ["elle_a"]


def test_a_rollback_restores_the_procedures_state_and_applies_the_remedy(tmp_path):
    trainer = tiny(tmp_path, "train.epochs=1", "monitor.enabled=true", "monitor.action=rollback",
                   "monitor.remedy={kind: lr, factor: 0.5}", "procedures=[toy_ema_forget]")
    monitor = next(cb for cb in trainer.callbacks if type(cb).__name__ == "OverfitMonitor")
    proc = trainer.procedures[0]
    proc.epochs_seen = 1
    monitor._take_snapshot(trainer)
    proc.epochs_seen = 7
    gen_state = proc.gen.get_state()
    torch.randn(3, generator=proc.gen)
    monitor._rollback(trainer)
    assert proc.epochs_seen == 1 and torch.equal(proc.gen.get_state(), gen_state)
    assert trainer.lr_scale == 0.5 and trainer.remedies == [{"kind": "lr", "factor": 0.5}]
