"""FOMO and CURE (issue 18) as training procedures: their operations on fixed tensors against hand-computed values
and independent transcriptions (CURE: of NeurAI-Lab/CURE@03fe414's rgp step; FOMO: of the paper's description, the
official repository holds no code), one Trainer step of CURE against the transcribed official step, exact resume,
config errors."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import KillAt
from parity.case_cure import official_conserve, official_loss, official_revise  # NeurAI-Lab/CURE@03fe414, transcribed
from robustrain.config import load_config
from robustrain.errors import ConfigError
from robustrain.training.procedures import build_procedure
from robustrain.training.procedures.cure import conserve, distill_kl
from robustrain.training.procedures.fomo import forget, layers_to_forget

from test_weight_averaging import QUICK
from test_weight_averaging import tiny as tiny_run


def tiny(tmp_path: Path, *extra: str, run: str = "run"):
    return tiny_run(tmp_path, *extra, run=run)[0]


def ctx(step: int, epoch: int = 0):
    return SimpleNamespace(step=step, epoch=epoch)


# -- CURE ------------------------------------------------------------------------------------------------------
def test_conserve_by_hand_and_against_numpy_percentile():
    g = torch.tensor([0.1, -0.5, 0.2, 0.05, -0.3])
    head = torch.tensor([0.01, 0.02])
    # |g| sorted 0.05 0.1 0.2 0.3 0.5; the 40th percentile (linear) is 0.1 + 0.6·0.1 = 0.16: 0.1 and 0.05 conserved
    assert conserve([("net.conv.weight", g), ("net.linear.weight", head)], 0.4, ("linear", "fc")) == 2
    assert torch.equal(g, torch.tensor([0.0, -0.5, 0.2, 0.0, -0.3]))
    assert torch.equal(head, torch.tensor([0.01, 0.02]))  # the classifier is never masked
    gen = torch.Generator().manual_seed(0)
    for p in (0.0, 0.3, 0.77, 1.0):
        g = torch.randn(3, 4, 5, generator=gen)
        ref = g.numpy().copy()  # the official rgp lines, rewritten: zero |g| < np.percentile(|g|, 100·p)
        ref[np.abs(ref) < np.percentile(np.abs(ref), p * 100)] = 0.0
        conserve([("conv", g)], p, ())
        np.testing.assert_allclose(g.numpy(), ref, rtol=0, atol=0)


def test_distillation_kl_by_hand():
    s, t = torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    p, q = s.softmax(1), t.softmax(1)
    assert distill_kl(s, t).item() == pytest.approx(float((q * (q.log() - p.log())).sum() / 2), rel=1e-6)


def test_revision_schedule_by_hand():
    """rate 1 (every step), decay cap 0.6: a = min(1 − 1/(s+1), 0.6) = 0.5, 0.6, 0.6; θ = 1, 4, 2 from θ₀ = 0."""
    proc = build_procedure({"name": "cure", "rate": 1.0, "decay": 0.6})
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    proc.on_epoch_start(lin, None, 0)
    for s, v in enumerate([1.0, 4.0, 2.0]):
        with torch.no_grad():
            lin.weight.fill_(v)
        proc.after_step(lin, None, ctx(s))
    # 0.5·0 + 0.5·1 = 0.5; 0.6·0.5 + 0.4·4 = 1.9; 0.6·1.9 + 0.4·2 = 1.94
    assert proc.averaged.weight.item() == pytest.approx(1.94, rel=1e-6)
    never = build_procedure({"name": "cure", "rate": 0.0})
    never.on_epoch_start(lin, None, 0)
    never.after_step(lin, None, ctx(0))
    assert never.n_averaged == 0


def official_rgp_step(model, teacher, x, x_adv, y, opt, *, w_nat, w_rob, gamma, p, revise, step, decay):
    """NeurAI-Lab/CURE@03fe414, --reinit_mode rgp, rewritten from reading train_cure + cure_loss_dual: student and
    teacher forwards in train mode, CE on x and x_adv, KL to the teacher on both, backward, per-tensor percentile
    mask (names with linear / fc skipped), step, EMA of the parameters when the coin says so."""
    model.train(), teacher.train()
    out_nat = model(x)
    t_nat = teacher(x).detach()
    out_adv = model(x_adv)
    t_adv = teacher(x_adv).detach()
    loss = official_loss(out_nat, out_adv, t_nat, t_adv, y, w_nat=w_nat, w_rob=w_rob, gamma=gamma)
    opt.zero_grad()
    loss.backward()
    official_conserve(model, p)
    opt.step()
    if revise:
        official_revise(teacher, model, step, decay)


def test_a_trainer_step_equals_the_official_rgp_step(tmp_path):
    """A model without BatchNorm (the order of the forwards then cannot matter), a deterministic attack (FGSM from
    zero), constant lr: the Trainer's step with procedures: [cure] and the transcribed official step, from the same
    weights on the same batch, agree for three steps (teacher revised at each: rate 1)."""
    trainer = tiny(tmp_path, "model.kwargs={input_size: 8, batchnorm: false}", "attack={name: fgsm, init_scale: 0}",
                   "schedule={name: constant}", "optim.weight_decay=0", "objective={name: ce}",
                   "procedures=[{name: cure, rate: 1.0, percentile: 0.3, decay: 0.9}]")
    proc = trainer.procedures[0]
    proc.on_epoch_start(trainer.model, trainer.optimizer, 0)
    import copy
    ref_model = copy.deepcopy(trainer.model)
    ref_teacher = copy.deepcopy(trainer.model)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=trainer.optimizer.param_groups[0]["lr"], momentum=0.9)
    batches = iter(trainer.train_loader.iterate(0))
    for s in range(3):
        x, y = next(batches)
        x_adv = trainer.attack(trainer.model, x, y, generator=trainer.generator).x_adv
        official_rgp_step(ref_model, ref_teacher, x, x_adv, y, ref_opt, w_nat=0.1, w_rob=0.9, gamma=1.0, p=0.3,
                          revise=True, step=s + 1, decay=0.9)
        trainer.train_step(x, y)
        trainer.step += 1
        for (k, a), b in zip(trainer.model.state_dict().items(), ref_model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
        for a, b in zip(proc.averaged.parameters(), ref_teacher.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert proc.conserved > 0


# -- FOMO ------------------------------------------------------------------------------------------------------
def test_forget_replaces_a_fraction_with_fresh_initial_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 100), nn.Linear(100, 100))
    layers = layers_to_forget(net, (), 2)
    assert [n for n, _ in layers] == ["3", "4"]
    assert [n for n, _ in layers_to_forget(net, ("0",), 1)] == ["0"]
    before = {n: m.weight.detach().clone() for n, m in layers}
    conv = net[0].weight.detach().clone()
    gen = torch.Generator().manual_seed(7)
    assert forget(net, layers, 0.0, gen) == 0
    assert all(torch.equal(before[n], m.weight) for n, m in layers)
    n = forget(net, layers, 0.3, gen)
    total = sum(m.weight.numel() for _, m in layers)
    assert abs(n / total - 0.3) < 4 * (0.3 * 0.7 / total) ** 0.5  # Bernoulli(0.3) per entry
    for name, m in layers:
        changed = m.weight != before[name]
        bound = 1 / m.weight.shape[1] ** 0.5  # kaiming_uniform(a=√5) of nn.Linear: U(−1/√fan_in, 1/√fan_in)
        assert m.weight[changed].abs().max() <= bound
    assert torch.equal(net[0].weight, conv)  # earlier layers untouched
    all_gone = forget(net, layers[1:], 1.0, gen)
    assert all_gone == 100 * 100
    with pytest.raises(ConfigError, match="matches no conv / linear module.*0, 3, 4"):
        layers_to_forget(net, ("layer4",), 1)


def test_fomo_schedule_consolidation_and_consistency_by_hand():
    proc = build_procedure({"name": "fomo", "start_epoch": 2, "every": 3, "fraction": 0.5, "consolidate": "phase",
                            "decay": 0.5, "last": 1, "consistency": 2.0})
    assert [e for e in range(10) if proc.is_forgetting_epoch(e)] == [2, 5, 8]
    lin = nn.Linear(2, 2)
    term = proc.loss_terms()[0]
    x = torch.tensor([[1.0, -1.0]])
    step_ctx = SimpleNamespace(x=x, y=torch.tensor([0]), result=SimpleNamespace(x_adv=x), model=lin,
                               logits_adv=torch.tensor([[0.0, 1.0]]), autocast=lambda: torch.autocast("cpu", enabled=False))
    proc.on_epoch_start(lin, None, 0)
    assert term(step_ctx)["loss"].item() == 0.0  # before the first forgetting: no consistency
    with torch.no_grad():
        lin.weight.fill_(1.0), lin.bias.fill_(0.0)
    proc.on_epoch_start(lin, None, 2)  # consolidation copies θ (first), then forgetting changes the working model
    assert torch.equal(proc.averaged.weight, torch.ones(2, 2)) and proc.forgettings == 1
    assert (lin.weight != 1.0).any()
    with torch.no_grad():
        lin.weight.fill_(3.0)
    proc.on_epoch_start(lin, None, 5)  # ½·1 + ½·3
    assert torch.equal(proc.averaged.weight, torch.full((2, 2), 2.0))
    out = term(step_ctx)
    q = proc.averaged(x).softmax(1)  # the stable model's prediction at x_adv, then KL(q ‖ p)
    p = torch.tensor([[0.0, 1.0]]).softmax(1)
    assert out["kl"].item() == pytest.approx(float((q * (q.log() - p.log())).sum()), rel=1e-5)
    assert out["loss"].item() == pytest.approx(2.0 * out["kl"].item(), rel=1e-6)


# -- both in the Trainer ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("spec", ["{name: fomo, start_epoch: 1, every: 1, fraction: 0.2, last: 2, decay: 0.9}",
                                  "{name: fomo, start_epoch: 0, every: 2, consolidate: phase, decay: 0.5}",
                                  "{name: cure, rate: 0.5, decay: 0.9}"])
def test_kill_and_resume_is_exact(tmp_path, spec):
    extra = ["train.epochs=3", "train.checkpoint_every=3", f"procedures=[{spec}]"]
    if "cure" in spec:
        extra.append("attack={name: trades, steps: 2, bn_mode: eval}")
    full = tiny(tmp_path, *extra, run="full")
    full.fit()
    killed = tiny(tmp_path, *extra, run="killed")
    killed.callbacks.append(KillAt(6))  # mid-epoch 2 (4 steps per epoch), after the checkpoint of step 6
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    torch.manual_seed(1234)
    resumed = tiny(tmp_path, *extra, run="killed")
    resumed.fit(resume=tmp_path / "killed" / "last.pt")
    for a, b in ((full.model, resumed.model), (full.procedures[0].averaged, resumed.procedures[0].averaged)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
    assert resumed.history == full.history


# -- config ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, match", [
    ("{name: fomo, fraction: 1.5}", r"fomo.fraction is the share .* in \[0, 1\]; got 1.5"),
    ("{name: fomo, every: 0}", "fomo.every must be a whole number >= 1"),
    ("{name: fomo, consolidate: epoch}", "fomo.consolidate = 'epoch'; expected one of: step, phase"),
    ("{name: fomo, modules: net.layer4}", None),
    ("{name: fomo, modules: [1, 2]}", "fomo.modules is a list of module-name prefixes"),
    ("{name: fomo, decay: 1.0}", r"fomo.decay must lie in \[0, 1\)"),
    ("{name: fomo, forget_rate: 0.1}", "Valid keys: name, start_epoch, every, fraction"),
    ("{name: cure, percentile: 30}", r"cure.percentile .* in \[0, 1\]; got 30.0 \(a percentage\? use 0.3\)"),
    ("{name: cure, rate: -0.1}", r"cure.rate .* in \[0, 1\]"),
    ("{name: cure, w_nat: -1}", "cure.w_nat is a loss weight >= 0"),
    ("{name: cure, exclude: [1]}", "cure.exclude is a list of parameter-name substrings"),
])
def test_bad_options_are_config_errors(spec, match):
    if match is None:
        assert load_config(QUICK, [f"procedures=[{spec}]"]).procedures[0]["modules"] == "net.layer4"
        return
    with pytest.raises(ConfigError, match=match):
        load_config(QUICK, [f"procedures=[{spec}]"])
