"""FGSM-MEP (ConvergeSmooth's B-MEP base attack): inside the threat model, model untouched, the buffer update of the
official FGSM_MEP_CS.py checked against a hand computation, re-initialisation every ``reset_every`` epochs, dataset
indices from the loader, and a killed and resumed run that ends bit-identical (buffers included)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from robustrain.attacks import FGSMMEP, build_attack
from robustrain.attacks.base import SmoothedCrossEntropy
from robustrain.config import load_config
from robustrain.data import BatchLoader
from robustrain.errors import CheckpointError, ConfigError
from robustrain.build import build_trainer
from robustrain.threat import make_threat
from robustrain.training import load_checkpoint

from conftest import KillAt, digits_batch, make_digits_model
from test_attacks import assert_unchanged, snapshot

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
FAST = ["train.progress=false", "wandb.mode=disabled", "eval.attack={name: pgd, steps: 3, restarts: 1}",
        "validation.attack={name: pgd, steps: 2, restarts: 1}", "validation.fgsm=false"]


def call(attack, model, x, y, idx, epoch, n, seed=0):
    return attack(model, x, y, generator=torch.Generator().manual_seed(seed), indices=idx, epoch=epoch,
                  num_examples=n)


# -- threat model and model guard -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_with_bn():
    return make_digits_model(batchnorm=True)


@pytest.mark.slow
@given(norm=st.sampled_from(["linf", "l2"]), eps=st.floats(0.0, 0.4), ratio=st.sampled_from([0.5, 1.0, 1.25]),
       clip_init=st.booleans(), bn_mode=st.sampled_from(["eval", "train"]), training=st.booleans(),
       seed=st.integers(0, 10_000), n=st.integers(1, 9))
def test_outputs_and_buffer_stay_in_threat_model_and_model_is_untouched(model_with_bn, digits, norm, eps, ratio,
                                                                        clip_init, bn_mode, training, seed, n):
    model = model_with_bn
    model.train(training)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5) if seed % 2 else None
    threat = make_threat(norm, eps if norm == "linf" else 4 * eps)
    attack = build_attack("fgsm_mep", threat, step=ratio * threat.eps, clip_init=clip_init, bn_mode=bn_mode,
                          reset_every=2)
    N = 12
    gen = torch.Generator().manual_seed(seed)
    before = snapshot(model)
    for epoch in range(3):  # epoch 2 re-initialises
        idx = torch.randperm(N, generator=gen)[:n]
        x, y = digits_batch(digits[0], n, offset=seed % 1000 + epoch)
        res = call(attack, model, x, y, idx, epoch, N, seed)
        assert_unchanged(model, before)
        assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype and res.delta.dtype == torch.float32
        assert threat.contains(x, res.x_adv, atol=1e-6).all()  # δ within ε, x_adv in [0,1]
        assert torch.allclose(res.x_adv, x + res.delta, atol=1e-6)
        assert (threat.norms(res.x_init - x) <= threat.eps + 1e-6).all()
        if clip_init:
            assert threat.contains(x, res.x_init, atol=1e-6).all()
        assert res.loss_init.shape == (n,) and res.grad_init.shape == x.shape
        state = attack.state_dict()
        assert (threat.norms(state["prior"]) <= threat.eps + 1e-6).all()  # every stored prior is in the ball
        assert state["block"] == epoch // 2


def test_model_restored_when_it_raises_and_buffer_untouched(model_with_bn, digits):
    class Boom(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            self.inner(x)
            raise RuntimeError("boom")

    model = Boom(model_with_bn)
    x, y = digits_batch(digits[0], 4)
    attack = build_attack("fgsm_mep", make_threat("linf", 0.1), bn_mode="train")
    call(attack, model_with_bn, x, y, torch.arange(4), 0, 8)
    prior = attack.state_dict()["prior"].clone()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        call(attack, model, x, y, torch.arange(4), 0, 8)
    assert_unchanged(model, before)
    assert torch.equal(attack.state_dict()["prior"], prior)


# -- the update against a hand computation ----------------------------------------------------------------------
def _hand_step(W, b, x, y, P, M, idx, eps, alpha, mu, s, clip_init):
    """One FGSM-MEP step of the official code in float64, by hand: linear model z = W·vec(x + δ) + b, label-smoothed
    CE (torch convention s), gradient of the batch MEAN (as the code's LabelSmoothLoss)."""
    x, C = x.double(), W.shape[0]
    d = P[idx].clone()
    if clip_init:
        d = torch.maximum(torch.minimum(d, 1 - x), -x)
    z = (x + d).flatten(1) @ W.T + b
    p = torch.softmax(z, dim=1)
    target = (1 - s) * F.one_hot(y, C).double() + s / C
    g = ((p - target) @ W).view_as(x) / len(y)
    m = g / g.abs().sum() + mu * M[idx]
    box = lambda v: torch.maximum(torch.minimum(v, 1 - x), -x)  # noqa: E731
    adv = box((d + alpha * g.sign()).clamp(-eps, eps))
    P, M = P.clone(), M.clone()
    P[idx] = box((d + alpha * m.sign()).clamp(-eps, eps))
    M[idx] = m
    return adv, P, M


@pytest.mark.parametrize("clip_init", [False, True])
def test_buffer_update_matches_a_hand_computation(clip_init):
    torch.manual_seed(0)
    N, C, shape = 7, 4, (1, 3, 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, C))
    W, b = model[1].weight.detach().double(), model[1].bias.detach().double()
    eps, alpha, mu, s = 0.1, 0.08, 0.3, 4 / 9
    attack = FGSMMEP(make_threat("linf", eps), step=alpha, momentum_decay=mu, label_smoothing=s, clip_init=clip_init)
    # an injected prior (block 0: no re-initialisation at epoch 0) with values that leave the box for these x
    P = (torch.rand(N, *shape, dtype=torch.float64) * 2 - 1) * eps
    M = torch.zeros(N, *shape, dtype=torch.float64)
    attack.load_state_dict({"prior": P.float(), "momentum": M.float(), "block": 0})
    P, M = P.float().double(), M
    x_all = torch.rand(N, *shape)
    x_all[:, 0, 0, :] = torch.tensor([0.0, 1.0, 0.02])  # pixels at and near the box edges
    y_all = torch.randint(0, C, (N,))
    outside = False
    for idx in (torch.tensor([3, 1, 4]), torch.tensor([1, 5, 3, 0]), torch.tensor([1])):  # row 1: momentum builds up
        x, y = x_all[idx], y_all[idx]
        start = P[idx]
        if clip_init:
            start = torch.maximum(torch.minimum(start, 1 - x.double()), -x.double())
        res = call(attack, model, x, y, idx, 0, N)
        adv, P, M = _hand_step(W, b, x, y, P, M, idx, eps, alpha, mu, s, clip_init)
        state = attack.state_dict()
        assert torch.allclose(res.delta.double(), adv, atol=1e-6)
        assert torch.allclose(state["prior"].double(), P, atol=1e-6)  # rows outside the batch unchanged too
        assert torch.allclose(state["momentum"].double(), M, rtol=1e-5, atol=1e-9)
        # the start point: the stored prior as it is (the code, out of the box where it is) or box-clipped
        assert torch.allclose(res.x_init.double(), x.double() + start, atol=1e-6)
        outside |= bool(((x.double() + start) < 0).any() or ((x.double() + start) > 1).any())
    assert outside != clip_init
    assert (M[1] != 0).all() and not torch.equal(M[1], M[5])


def test_label_smoothing_four_ninths_is_the_codes_smoothed_target():
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    logp = F.log_softmax(logits, dim=1)
    onehot = F.one_hot(y, 10).float()
    official = -(logp * (0.6 * onehot + 0.4 / 9 * (1 - onehot))).sum(1)  # _label_smoothing(y, 0.6, 10)
    assert torch.allclose(SmoothedCrossEntropy(4 / 9)(logits, y), official, atol=1e-6)


def test_zero_gradient_leaves_decayed_momentum_not_nan():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    nn.init.zeros_(model[1].weight)  # input gradient exactly 0
    attack = FGSMMEP(make_threat("linf", 0.1))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    attack.load_state_dict({"prior": torch.zeros(2, 1, 2, 2), "momentum": torch.ones(2, 1, 2, 2), "block": 0})
    call(attack, model, x, y, torch.arange(2), 0, 2)
    assert torch.allclose(attack.state_dict()["momentum"], torch.full((2, 1, 2, 2), 0.3))


# -- initialisation and re-initialisation ------------------------------------------------------------------------
@pytest.mark.parametrize("ratio,level", [(1.0, 1.0), (0.5, 0.5), (2.0, 1.0)])
def test_initial_prior_is_clamped_signed_step(digits, ratio, level):
    eps = 0.1
    attack = FGSMMEP(make_threat("linf", eps), step=ratio * eps)
    x, y = digits_batch(digits[0], 4)
    model = make_digits_model(batchnorm=False)
    call(attack, model, x, y, torch.arange(4), 0, 200)
    rest = attack.state_dict()["prior"][4:]  # rows not visited: the initial draw, NOT box-clipped
    assert torch.equal(rest.abs(), torch.full_like(rest, level * eps))
    assert 0.45 < (rest > 0).float().mean() < 0.55
    assert torch.equal(attack.state_dict()["momentum"][4:], torch.zeros_like(rest))


def test_reinitialised_when_the_epoch_enters_a_new_block(digits):
    eps, N = 0.1, 50
    attack = FGSMMEP(make_threat("linf", eps), reset_every=40)
    model = make_digits_model(batchnorm=False)
    x, y = digits_batch(digits[0], 4)
    idx = torch.arange(4)
    call(attack, model, x, y, idx, 0, N)
    first = {k: v.clone() for k, v in attack.state_dict().items() if k != "block"}
    call(attack, model, x, y, idx + 4, 39, N)  # same block: rows 0-3 keep their update, 4-7 are updated
    s = attack.state_dict()
    assert torch.equal(s["prior"][:4], first["prior"][:4]) and s["block"] == 0
    assert (s["momentum"][4:8] != 0).any()
    call(attack, model, x, y, idx, 40, N, seed=1)  # epoch 40: fresh buffers, then rows 0-3 updated
    s = attack.state_dict()
    assert s["block"] == 1
    assert torch.equal(s["momentum"][4:], torch.zeros_like(s["momentum"][4:]))
    assert not torch.equal(s["prior"][8:], first["prior"][8:])  # a new draw
    assert torch.equal(s["prior"][8:].abs(), torch.full_like(s["prior"][8:], eps))
    never = FGSMMEP(make_threat("linf", eps), reset_every=0)
    call(never, model, x, y, idx, 0, N)
    call(never, model, x, y, idx + 4, 500, N)
    assert never.state_dict()["block"] == 0 and (never.state_dict()["momentum"][:4] != 0).any()


def test_without_indices_the_call_is_stateless(digits):
    attack = FGSMMEP(make_threat("linf", 0.1))
    x, y = digits_batch(digits[0], 4)
    model = make_digits_model(batchnorm=False)
    res = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert attack.state_dict()["prior"] is None
    assert make_threat("linf", 0.1).contains(x, res.x_adv).all()


def test_bad_inputs_are_clear_errors(digits):
    t = make_threat("linf", 0.1)
    for bad in ({"init": "random"}, {"reset_every": -1}, {"label_smoothing": 1.0}, {"momentum_decay": -0.1}):
        with pytest.raises(ConfigError):
            build_attack("fgsm_mep", t, **bad)
    attack = FGSMMEP(t)
    x, y = digits_batch(digits[0], 4)
    model = make_digits_model(batchnorm=False)
    with pytest.raises(ValueError, match="epoch and num_examples"):
        attack(model, x, y, indices=torch.arange(4))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
        call(attack, model, x, y, torch.arange(4), 0, 3)
    call(attack, model, x, y, torch.arange(4), 0, 10)
    with pytest.raises(ValueError, match="this training set has"):
        call(attack, model, x, y, torch.arange(4), 0, 11)
    with pytest.raises(CheckpointError):
        attack.load_state_dict({"prior": torch.zeros(2)})


# -- indices from the loader --------------------------------------------------------------------------------------
def test_loader_yields_the_dataset_indices_of_each_batch_and_shard(digits):
    ds = digits[0]
    plain = BatchLoader(ds, 100, shuffle=True, seed=3)
    got = list(plain.iterate(2, with_indices=True))
    assert torch.equal(torch.cat([i for _, _, i in got]), plain.order(2))
    for (x, y, i), (x2, y2) in zip(got, plain.iterate(2)):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert torch.equal(x, ds.images[i].float() / 255) and torch.equal(y, ds.labels[i])
    ordered = BatchLoader(ds, 100, shuffle=False)
    assert torch.equal(next(iter(ordered.iterate(0, start_batch=3, with_indices=True)))[2], torch.arange(300, 400))
    aug = {"shuffle": True, "seed": 3, "augment": "crop_flip"}
    shards = [list(BatchLoader(ds, 100, rank=r, world_size=3, **aug).iterate(1, start_batch=2, with_indices=True))
              for r in range(3)]
    whole = list(BatchLoader(ds, 100, **aug).iterate(1, start_batch=2, with_indices=True))
    for k, (x, y, i) in enumerate(whole):
        assert torch.equal(torch.cat([s[k][2] for s in shards]), i)
        assert torch.equal(torch.cat([s[k][0] for s in shards]), x)


# -- the Trainer: indices reach the attack, checkpoints hold the buffers -------------------------------------------
def _mep_cfg(tmp_path, *extra):
    return load_config(QUICK, [*FAST, f"out_dir={tmp_path}", "data.train_subset=400", "data.batch_size=64",
                               "attack={name: fgsm_mep, bn_mode: train, reset_every: 2, label_smoothing: 4/9, "
                               "clip_init: false}", *extra])


@pytest.mark.slow
def test_kill_mid_epoch_and_resume_gives_identical_weights_and_buffers(tmp_path):
    cfg = _mep_cfg(tmp_path, "train.epochs=3", "train.checkpoint_every=5")
    full, _ = build_trainer(cfg, tmp_path / "full")
    full.fit()
    state = full.attack.state_dict()
    assert state["block"] == 1  # re-initialised at epoch 2
    n = len(full.train_loader.dataset)
    assert state["prior"].shape[0] == n
    visited = (state["momentum"].flatten(1) != 0).any(1)
    assert visited.all()  # every example of epoch 2 reached the attack with its own index
    killed, _ = build_trainer(cfg, tmp_path / "killed")
    at = full.steps_per_epoch + 3  # mid-epoch 1; the last checkpoint (step 5) is mid-epoch 0
    killed.callbacks.append(KillAt(at))
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    ckpt = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert ckpt["trainer"]["step"] == 5 * (at // 5) and ckpt["attack"]["prior"].shape[0] == n
    torch.manual_seed(1234)
    resumed, _ = build_trainer(cfg, tmp_path / "killed")
    resumed.fit(resume=tmp_path / "killed" / "last.pt")
    assert resumed.step == full.step and resumed.history == full.history
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), f"{k} differs"
    for k in ("prior", "momentum"):
        assert torch.equal(state[k], resumed.attack.state_dict()[k])
    # a checkpoint without the attack's state cannot resume exactly: refused
    del ckpt["attack"]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="fgsm_mep"):
        build_trainer(cfg, tmp_path / "other")[0].load_checkpoint(tmp_path / "old.pt")


# -- distributed: every rank's buffer is the single-process buffer ------------------------------------------------
def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        trainer, _ = build_trainer(_mep_cfg(tmp, "train.epochs=2", "data.train_subset=320", "train.checkpoint_every=0"),
                                   Path(tmp) / "ddp")
        trainer.fit()
        torch.save({"attack": trainer.attack.state_dict(), "model": trainer.model.state_dict()},
                   Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_ranks_hold_the_single_process_buffer(tmp_path):
    """Two gloo ranks (quickstart's small CNN has no BatchNorm, so every example's gradient is that of one process):
    both ranks end with the buffers and (to rounding) the weights of a single process."""
    from test_distributed import free_port

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single, _ = build_trainer(_mep_cfg(tmp_path, "train.epochs=2", "data.train_subset=320",
                                       "train.checkpoint_every=0"), tmp_path / "single")
    single.fit()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        for k in ("prior", "momentum"):
            assert torch.equal(r["attack"][k], ranks[0]["attack"][k])
            assert torch.allclose(r["attack"][k], single.attack.state_dict()[k], atol=1e-5)
        for k, v in single.model.state_dict().items():
            assert torch.allclose(r["model"][k], v, atol=1e-4), k
    (tmp_path / "done.json").write_text(json.dumps({"ok": True}))


def test_recipe_follows_the_official_script():
    """configs/cifar10_convergesmooth_mep.yaml: FGSM_MEP_CS.py's defaults (ε = α = 16/255, momentum decay 0.3, reset
    every 40 epochs, label smoothing 0.6, unclipped start, BN statistics updated by the attack, clean benign point)."""
    from robustrain.build import build_attack_from

    cfg = load_config(ROOT / "configs" / "cifar10_convergesmooth_mep.yaml")
    a = cfg.attack
    assert a["name"] == "fgsm_mep" and cfg.threat.eps == pytest.approx(16 / 255) and a["step"] == pytest.approx(16 / 255)
    assert a["momentum_decay"] == 0.3 and a["reset_every"] == 40 and a["clip_init"] is False
    assert a["label_smoothing"] == pytest.approx(4 / 9) and cfg.train.label_smoothing == pytest.approx(4 / 9)
    assert a["bn_mode"] == "train" and a["update_bn_stats"] is True and cfg.model.normalise is False
    (cs,) = cfg.regularisers
    assert cs["name"] == "convergesmooth" and cs["benign"] == "clean" and cs["segments"] == [0, 100, 105, 110]
    assert cfg.train.epochs == 110 and cfg.schedule.milestones == [100, 105] and cfg.optim.lr == 0.1
    attack = build_attack_from(a, make_threat("linf", cfg.threat.eps), default_bn="train")
    assert isinstance(attack, FGSMMEP) and attack.update_bn_stats and not attack.in_box
