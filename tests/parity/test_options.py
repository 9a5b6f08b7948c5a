"""Options the parity cases added to robustrain (issue 13), checked on their own."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from robustrain.attacks import build_attack
from robustrain.attacks.trades import kl_from_clean
from robustrain.threat import make_threat


def test_trades_clip_init_false_starts_at_the_unclipped_gaussian_point():
    threat = make_threat("linf", 0.031)
    x = torch.tensor([[[[0.0, 1.0, 0.5, 0.0]]]]).expand(8, 1, 1, 4).contiguous()
    gen = lambda: torch.Generator().manual_seed(3)
    clipped = build_attack("trades", threat, loss="ce").start(x, gen())
    raw = build_attack("trades", threat, loss="ce", clip_init=False).start(x, gen())
    noise = 0.001 * torch.randn(x.shape, generator=gen())
    assert torch.equal(raw, noise)  # x + 0.001·N as the official trades.py / mart.py feed it
    assert torch.equal(clipped, (x + noise).clamp(0, 1) - x)
    assert bool(((x + raw) < 0).any()) and bool(((x + raw) > 1).any())


def test_trades_attack_result_is_in_the_box_with_an_unclipped_start():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    threat = make_threat("linf", 0.031)
    x = torch.tensor([[[[0.0, 1.0, 0.5, 0.0]]]]).expand(8, 1, 1, 4).contiguous()
    y = torch.zeros(8, dtype=torch.long)
    res = build_attack("trades", threat, clip_init=False, steps=3, step=0.007)(model, x, y,
                                                                          generator=torch.Generator().manual_seed(0))
    assert bool(threat.contains(x, res.x_adv).all())


def test_kl_attack_gradient_is_the_official_codes_float_for_float():
    """The TRADES attack's KL gradient equals that of trades.py's KLDivLoss(sum)(log_softmax f(x'), softmax f(x))
    bit for bit (near x the gradient is so small that its sign, hence the attack step, depends on the last bit)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 10, generator=g) * 3
    adv = (logits + 1e-4 * torch.randn(6, 10, generator=g)).requires_grad_(True)
    (ours,) = torch.autograd.grad(kl_from_clean(logits)(adv, torch.zeros(6, dtype=torch.long)).sum(), adv)
    official = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(logits, dim=1), reduction="sum")
    (ref,) = torch.autograd.grad(official, adv)
    assert torch.equal(ours, ref)
