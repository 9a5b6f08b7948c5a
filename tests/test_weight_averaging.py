"""Weight averaging (procedures ``ema`` and ``swa``): the update on fixed tensors against hand-computed values and
against independent transcriptions of the common AT codes' EMA (FastAT_Benchmark, adversarial_robustness_pytorch)
and of torch's SWA utilities; validation, checkpoints and the final evaluation use the average; exact resume; config
errors."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import KillAt
from robustrain.build import build_trainer
from robustrain.config import load_config
from robustrain.errors import ConfigError
from robustrain.training.checkpoint import load_checkpoint
from robustrain.training.procedures import build_procedure
from robustrain.training.procedures._averaging import recompute_bn

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
TINY = ["train.progress=false", "data.train_subset=256", "data.val_size=100", "data.batch_size=64",
        "validation.attack={name: pgd, steps: 2, restarts: 1}", "eval.attack={name: pgd, steps: 2, restarts: 1}",
        "model.kwargs={input_size: 8, batchnorm: true}"]


def tiny(tmp_path: Path, *extra: str, run: str = "run"):
    cfg = load_config(QUICK, [*TINY, f"out_dir={tmp_path}", *extra])
    trainer, data = build_trainer(cfg, tmp_path / run)
    return trainer, data, cfg


def toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def set_weights(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model[1].running_mean.fill_(value)
        model[1].running_var.fill_(value + 1)
        model[1].num_batches_tracked.fill_(int(value))


def ctx(step: int, epoch: int = 0, x=None, x_adv=None):
    return SimpleNamespace(step=step, epoch=epoch, x=x, result=SimpleNamespace(x_adv=x_adv))


def run_ema(proc, model, values):
    proc.on_epoch_start(model, None, 0)
    for i, v in enumerate(values):
        set_weights(model, v)
        proc.after_step(model, None, ctx(i))
    return proc.averaged


# -- the update on fixed tensors -------------------------------------------------------------------------------
def test_ema_by_hand():
    """decay ½ with one copying step: θ = 1, 3, 5 → 1, ½·1 + ½·3 = 2, ½·2 + ½·5 = 3.5 (buffers averaged alike,
    integer buffers copied)."""
    model = toy()
    avg = run_ema(build_procedure({"name": "ema", "decay": 0.5, "warmup_steps": 1}), model, [1.0, 3.0, 5.0])
    assert torch.equal(avg[0].weight, torch.full((3, 2), 3.5))
    assert torch.equal(avg[1].running_mean, torch.full((3,), 3.5))
    assert torch.equal(avg[1].running_var, torch.full((3,), 4.5))
    assert int(avg[1].num_batches_tracked) == 5
    # every 2 steps, no warm-up: starts at θ₀ (0 here); folds in θ₂ = 3 and θ₄ = 7: ½·0 + ½·3 = 1.5, ½·1.5 + ½·7
    model = toy()
    set_weights(model, 0.0)
    avg = run_ema(build_procedure({"name": "ema", "decay": 0.5, "every": 2}), model, [1.0, 3.0, 5.0, 7.0])
    assert torch.equal(avg[0].bias, torch.full((3,), 4.25))
    # buffers: copy takes the training model's statistics
    model = toy()
    avg = run_ema(build_procedure({"name": "ema", "decay": 0.5, "buffers": "copy"}), model, [1.0, 3.0])
    assert torch.equal(avg[1].running_var, torch.full((3,), 4.0)) and avg[0].weight[0, 0] != 3.0


def fastat_transcription(states: list[dict], tau: float) -> dict:
    """fzjcdt/FastAT_Benchmark fast_at/n_fgsm.py@b99c0de, rewritten: the average is the model's own state dict
    (aliased, so the first update leaves the live values), then ``(1 − τ)·value + τ·avg`` over every entry."""
    avg = None
    for state in states:
        if avg is None:
            avg = dict(state)  # aliasing: (1-τ)·θ₁ + τ·θ₁
        avg = {k: (1 - tau) * v + tau * avg[k] for k, v in state.items()}
    return avg


def rebuffi_transcription(params: list[torch.Tensor], theta0: torch.Tensor, tau: float, warmup: int) -> torch.Tensor:
    """imrahulr/adversarial_robustness_pytorch gowal21uncovering/utils/watrain.py@6df6a8f ema_update, rewritten:
    step s from 1; decay 0 before the warm-up, then min(τ, (1 + δ)/(10 + δ)), δ = s − warm-up."""
    avg = theta0.clone()
    for s, p in enumerate(params, start=1):
        delta = s - warmup
        decay = min(tau, (1.0 + delta) / (10.0 + delta)) * int(s >= warmup)
        avg = avg * decay + p * (1 - decay)
    return avg


def test_ema_matches_the_fastat_and_rebuffi_codes():
    gen = torch.Generator().manual_seed(3)
    model = toy()
    states = []
    proc = build_procedure({"name": "ema", "decay": 0.9, "warmup_steps": 1})
    proc.on_epoch_start(model, None, 0)
    for i in range(30):
        with torch.no_grad():
            for t in list(model.parameters()) + [model[1].running_mean, model[1].running_var]:
                t.copy_(torch.randn(t.shape, generator=gen))
        states.append({k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()})
        proc.after_step(model, None, ctx(i))
    ref = fastat_transcription(states, 0.9)
    for k, v in proc.averaged.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, ref[k], rtol=1e-6, atol=1e-7)
    # Rebuffi's ramp, warm-up W_r = 5: here warmup_steps 4, ramp: true
    theta = [torch.randn(4, generator=gen) for _ in range(40)]
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(1, 4, generator=gen))
    theta0 = lin.weight.detach().clone()[0]
    proc = build_procedure({"name": "ema", "decay": 0.95, "warmup_steps": 4, "ramp": True})
    proc.on_epoch_start(lin, None, 0)
    for i, t in enumerate(theta):
        with torch.no_grad():
            lin.weight.copy_(t[None])
        proc.after_step(lin, None, ctx(i))
    torch.testing.assert_close(proc.averaged.weight[0], rebuffi_transcription(theta, theta0, 0.95, 5),
                               rtol=1e-6, atol=1e-7)
    assert [proc.decay_at(n) for n in (4, 5, 6)] == [0.0, 0.1, 2 / 11] and proc.decay_at(1000) == 0.95


def test_swa_is_the_mean_and_recomputes_bn_like_torch():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2), nn.BatchNorm1d(2))
    proc = build_procedure({"name": "swa", "start_epoch": 1, "bn_batches": 2})
    proc.on_epoch_start(model, None, 0)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 2, generator=gen) for _ in range(3)]
    folded = []
    for epoch in range(3):
        for i, x in enumerate(xs):
            proc.after_step(model, None, ctx(3 * epoch + i, epoch, x=x, x_adv=2 * x))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        if epoch >= 1:
            folded.append([p.detach().clone() for p in model.parameters()])
        proc.on_epoch_end(model, None, epoch)
        assert (proc.eval_model(model, "validation") is None) == (epoch < 1)  # training weights before the start
    for p_avg, *ps in zip(proc.averaged.parameters(), *folded):
        torch.testing.assert_close(p_avg, sum(ps) / len(ps))
    # BatchNorm: torch.optim.swa_utils.update_bn over the last two batches' adversarial inputs
    ref = torch.optim.swa_utils.AveragedModel(model)
    with torch.no_grad():
        for p, q in zip(ref.module.parameters(), proc.averaged.parameters()):
            p.copy_(q)
    torch.optim.swa_utils.update_bn([(2 * x,) for x in xs[1:]], ref.module)
    for a, b in zip(proc.averaged.buffers(), ref.module.buffers()):
        torch.testing.assert_close(a, b)
    assert proc.averaged[1].momentum == 0.1 and not proc.averaged.training  # restored


def test_recompute_bn_leaves_parameters_and_modes():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).eval()
    before = [p.clone() for p in model.parameters()]
    recompute_bn(model, [torch.ones(4, 2), torch.zeros(4, 2)])
    assert not model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    w, b = model[0].weight.detach(), model[0].bias.detach()
    torch.testing.assert_close(model[1].running_mean, (w.sum(1) + b + b) / 2)


# -- in the Trainer --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_validation_checkpoints_and_final_evaluation_use_the_average(tmp_path):
    from robustrain.run import final_evaluation

    trainer, data, cfg = tiny(tmp_path, "train.epochs=2", "eval.n_ex=64",
                              "procedures=[{name: ema, decay: 0.8}]")
    trainer.fit()
    avg = trainer.procedures[0].averaged
    assert not torch.equal(avg.state_dict()["net.0.weight"] if "net.0.weight" in avg.state_dict() else
                           next(avg.parameters()), next(trainer.model.parameters()))
    v = trainer.validate()
    from robustrain.evaluation import evaluate
    gen = torch.Generator().manual_seed(trainer.seed + 1_000_003)
    res = evaluate(avg, trainer.val_loader.iterate(0), {"robust": trainer.val_attack}, generator=gen)
    assert v["val_robust_acc"] == res.accuracy()["robust"] and v["val_clean_acc"] == res.accuracy()["clean"]
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["eval_weights"] == "ema"
    for k, t in avg.state_dict().items():
        assert torch.equal(last["eval_model"][k], t), k
        assert torch.equal(last["procedures"][0]["averaged"][k], t)
    for k, t in trainer.model.state_dict().items():
        assert torch.equal(last["model"][k], t)  # training weights: the resume continues from them
    summary = final_evaluation(cfg, tmp_path / "run", trainer, data, 0.0)
    assert [r["weights"] for r in summary["test"]] == ["ema", "ema"] and "| weights |" in summary["table"]
    for k, t in avg.state_dict().items():  # what was evaluated last: last.pt's averaged weights
        assert torch.equal(trainer.model.state_dict()[k], t)
    # use_for: [] keeps the training weights everywhere (the average is still kept)
    plain, *_ = tiny(tmp_path, "train.epochs=1", "procedures=[{name: ema, use_for: []}]", run="plain")
    plain.fit()
    assert "eval_model" not in load_checkpoint(tmp_path / "plain" / "last.pt")
    assert plain.procedures[0].n_averaged == 4


@pytest.mark.slow
def test_robustrain_eval_loads_the_averaged_weights(tmp_path):
    from robustrain.cli.target import load_run_target

    trainer, *_ = tiny(tmp_path, "train.epochs=1", "procedures=[{name: swa, every: 1, buffers: average}]")
    trainer.fit()
    target = load_run_target(tmp_path / "run", checkpoint="last", split="val", data_root=None, device="cpu",
                             n_ex=10, batch_size=None, eps=None)
    assert target.model_info["weights"] == "swa"
    for k, t in trainer.procedures[0].averaged.state_dict().items():
        assert torch.equal(target.model.state_dict()[k], t), k


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["{name: ema, decay: 0.7, warmup_steps: 2, ramp: true, every: 2}",
                                  "{name: swa, start_epoch: 1, bn_batches: 3}",
                                  "{name: swa, every: 3, buffers: copy, bn_inputs: clean}"])
def test_kill_and_resume_is_exact(tmp_path, spec):
    extra = ["train.epochs=3", "train.checkpoint_every=3", f"procedures=[{spec}]"]
    full, *_ = tiny(tmp_path, *extra, run="full")
    full.fit()
    killed, *_ = tiny(tmp_path, *extra, run="killed")
    killed.callbacks.append(KillAt(6))  # mid-epoch 2, after the checkpoint of step 6
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    torch.manual_seed(1234)
    resumed, *_ = tiny(tmp_path, *extra, run="killed")
    resumed.fit(resume=tmp_path / "killed" / "last.pt")
    for a, b in ((full.model, resumed.model), (full.procedures[0].averaged, resumed.procedures[0].averaged)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
    assert resumed.history == full.history
    assert full.procedures[0].n_averaged == resumed.procedures[0].n_averaged > 0


# -- config ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, match", [
    ("{name: ema, decay: 1.5}", r"procedures\[0\]: ema.decay must lie in \[0, 1\)"),
    ("{name: ema, every: 0}", "ema.every must be a whole number"),
    ("{name: ema, warmup_steps: -1}", "ema.warmup_steps must be a whole number >= 0"),
    ("{name: ema, buffers: recompute}", "ema.buffers = 'recompute'; expected one of: average, copy"),
    ("{name: ema, use_for: [test]}", "ema.use_for.*validation, final"),
    ("{name: ema, deacy: 0.9}", "Did you mean 'procedures\\[0\\].decay'|did you mean 'procedures\\[0\\].decay'"),
    ("{name: swa, bn_inputs: noisy}", "swa.bn_inputs = 'noisy'; expected one of: adversarial, clean"),
    ("{name: swa, start_epoch: -2}", "swa.start_epoch must be a whole number >= 0"),
    ("{name: swa, bn_batches: 0}", "swa.bn_batches must be a whole number >= 1"),
])
def test_bad_options_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_config(QUICK, [f"procedures=[{spec}]"])


def test_two_averages_are_refused():
    with pytest.raises(ConfigError, match="ema and swa both provide the model to evaluate"):
        load_config(QUICK, ["procedures=[ema, swa]"])
