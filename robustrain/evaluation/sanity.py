"""Checks before and after a robustness evaluation: is the number trustworthy?

Before: the model as handed over is in eval mode; two forward passes agree; outputs are logits, not
probabilities; input gradients are not zero. After: every adversarial example was finite, in [0,1] and within
ε; clean accuracy is above chance; and the gradient-masking signs (a black-box attack breaking points the
white-box ones could not, a weaker attack beating a stronger one, PGD accuracy far above AutoAttack's).

Each check gives a :class:`Check` (level ``ok``, ``warning`` or ``error``); the report stores them all, and
warnings and errors are printed.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..guards import restore_modes

LEVELS = ("ok", "warning", "error")
ZERO_GRAD_FRACTION = 0.01
PGD_GAP = 0.10
NEAR_CHANCE_MARGIN = 0.05


@dataclass
class Check:
    name: str
    when: str          # "before" or "after"
    level: str         # "ok", "warning" or "error"
    message: str
    value: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(name: str, when: str, bad: bool, level: str, bad_msg: str, ok_msg: str, **value: Any) -> Check:
    return Check(name, when, level if bad else "ok", bad_msg if bad else ok_msg, value)


def _stochastic_modules(model: nn.Module) -> list[str]:
    kinds = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
    return sorted({type(m).__name__ for m in model.modules() if m.training and isinstance(m, kinds)})


def _max_rel_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / (a.abs().max() + 1e-12))


def checks_before(model: nn.Module, x: Tensor, y: Tensor, *, given_training: bool,
                  randomised_ok: bool = False) -> list[Check]:
    """Checks on the first examples; ``model`` is already in eval mode, ``given_training`` is how it came.
    ``randomised_ok``: the evaluation averages over the randomness (AutoAttack ``rand``), so a randomised
    forward pass is expected, not an error."""
    out: list[Check] = []
    kinds: list[str] = []
    train_diff = 0.0
    if given_training:
        # the mode it came in: do its outputs move between passes? (BatchNorm buffers are restored after)
        buffers = copy.deepcopy({k: v for k, v in model.state_dict().items()})
        try:
            with restore_modes(model):
                model.train()
                kinds = _stochastic_modules(model)
                with torch.no_grad():
                    a, b = model(x), model(x)
                model.eval()
                with torch.no_grad():
                    e = model(x)
                train_diff = max(_max_rel_diff(a.float(), b.float()), _max_rel_diff(a.float(), e.float()))
        finally:
            model.load_state_dict(buffers)
    harmful = given_training and (bool(kinds) or train_diff > 1e-6)
    out.append(_check(
        "eval_mode", "before", harmful, "warning",
        "the model was handed over in train mode" + (f" (with {', '.join(kinds) or 'no dropout/BatchNorm'}; "
                                                     f"its outputs there differ from eval mode or between "
                                                     f"passes by {train_diff:.2g} relative)" if given_training else "")
        + "; robustrain evaluates in eval mode. Call model.eval() before evaluating elsewhere too: the official "
        "AutoAttack does not.",
        "the model was in eval mode" if not given_training else
        "the model came in train mode, but it has no dropout/BatchNorm and its outputs equal eval mode's",
        given_training=given_training,
        train_mode_rel_diff=train_diff if given_training else None))
    with torch.no_grad():
        a, b = model(x), model(x)
    diff = _max_rel_diff(a.float(), b.float())
    out.append(_check(
        "deterministic", "before", diff > 1e-5 and not randomised_ok, "error",
        f"two forward passes in eval mode differ (max relative difference {diff:.3g}): the model is randomised, so "
        "a deterministic attack's number means little; evaluate with --version rand (EOT).",
        "two forward passes agree" if diff <= 1e-5 else
        f"two forward passes differ ({diff:.3g} relative): a randomised model, evaluated with EOT (version rand)",
        max_rel_diff=diff))
    a = a.float()
    in_unit = bool(((a >= 0) & (a <= 1)).all())
    row_err = float((a.sum(dim=1) - 1).abs().max())
    probs = in_unit and row_err < 1e-3
    out.append(_check(
        "logits", "before", probs, "error",
        f"the outputs are in [0,1] and every row sums to 1 (within {row_err:.1g}): the model returns probabilities. "
        "Attacks need logits (remove the final softmax); on probabilities cross-entropy gradients vanish and "
        "robustness is overestimated.",
        "the outputs are logits (not rows of probabilities)", rows_sum_to_one=probs, max_row_sum_error=row_err))
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
    zero = torch.ones(x.shape[0], dtype=torch.bool) if grad is None else (grad.flatten(1).abs().amax(1) == 0).cpu()
    frac = float(zero.float().mean())
    out.append(_check(
        "zero_gradients", "before", frac >= ZERO_GRAD_FRACTION, "warning",
        f"{100 * frac:.1f}% of {x.shape[0]} examples have an all-zero input gradient: gradient masking "
        "(non-differentiable or saturated layers); white-box attacks are blind there, trust only the full "
        "AutoAttack (its Square stage is gradient-free).",
        "input gradients are non-zero", fraction=frac, n_checked=int(x.shape[0])))
    return out


def checks_after(records: list, n: int, num_classes: int, threat_desc: str) -> list[Check]:
    """Checks on the finished stages (``StageRecord`` list, in run order)."""
    out: list[Check] = []
    by = {r.name: r for r in records}
    for r in records:
        if r.group == "clean":
            continue
        a = r.adv
        bad = a["n_outside"] > 0 or a["n_nonfinite"] > 0
        out.append(_check(
            f"in_threat_model:{r.name}", "after", bad, "error",
            f"{r.name}: {a['n_outside']} adversarial examples outside {threat_desc} or [0,1] "
            f"({a['n_nonfinite']} non-finite; largest norm {a['max_norm']:.6g}); they were not counted as broken.",
            f"{r.name}: every adversarial example is finite, in [0,1] and within {threat_desc} "
            f"(largest perturbation returned: {a['max_norm']:.6g})", **a))
    clean = by.get("clean")
    if clean is not None and n > 0:
        acc = float(clean.robust.float().mean())
        chance = 1.0 / num_classes
        out.append(_check(
            "near_chance", "after", acc <= chance + NEAR_CHANCE_MARGIN, "warning",
            f"clean accuracy {100 * acc:.1f}% is near chance ({100 * chance:.1f}%): wrong weights, wrong "
            "normalisation or a randomised model? Robust accuracy of such a model means nothing.",
            f"clean accuracy {100 * acc:.1f}% is above chance ({100 * chance:.1f}%)", clean=acc, chance=chance))
    white = [r for r in records if r.group != "clean" and r.settings.get("kind") != "square"]
    white_broken = torch.zeros(n, dtype=torch.bool)
    for r in white:
        white_broken |= r.attacked & ~r.robust
    for square in (r for r in records if r.settings.get("kind") == "square"):
        if not white or n == 0:
            continue
        broken = int((square.attacked & ~square.robust & ~white_broken).sum())
        frac = broken / n
        out.append(_check(
            "black_box_beats_white_box" + ("" if square.name == "square" else f":{square.name}"), "after",
            broken > 0 and frac >= 0.001, "warning",
            f"Square (black-box) broke {broken} points ({100 * frac:.2f}%) that the gradient-based stages could not: "
            "a sign of gradient masking; the white-box numbers of this model are not reliable.",
            f"Square broke {broken} points the white-box stages missed", broken=broken, fraction=frac))
    aa_end = next((r for r in reversed(records) if r.group == "autoattack"), None)
    for r in records:
        if r.group in ("clean", "autoattack") or aa_end is None or n == 0:
            continue
        acc_r, acc_aa = float(r.robust.float().mean()), float(aa_end.robust.float().mean())
        missed = int((~r.robust & aa_end.robust).sum())
        out.append(_check(
            f"weaker_beats_stronger:{r.name}", "after", missed / n >= 0.005, "warning",
            f"{r.name} broke {missed} points that the whole AutoAttack left robust: a weaker attack beat a "
            "stronger one; the AutoAttack run may be misconfigured or the model's gradients are unreliable.",
            f"{r.name} found no point that AutoAttack missed (beyond {missed})", missed=missed))
        out.append(_check(
            f"pgd_far_above_autoattack:{r.name}", "after", acc_r - acc_aa > PGD_GAP, "warning",
            f"{r.name} accuracy {100 * acc_r:.2f}% is {100 * (acc_r - acc_aa):.1f} points above AutoAttack's "
            f"{100 * acc_aa:.2f}%: PGD overestimates this model's robustness (gradient masking); report AutoAttack.",
            f"{r.name} accuracy is within {100 * PGD_GAP:.0f} points of AutoAttack's", gap=acc_r - acc_aa))
    return out


#: Gradient-masking signs that make even the worst case over all attacks an overestimate: white-box attacks blind
#: on part of the inputs (zero input gradients), or a black-box attack breaking what every gradient-based stage
#: missed. (A PGD far above AutoAttack, or a weaker attack beating it, is already covered by the worst case, which
#: counts both; those stay warnings about the single attack's number.)
GRADIENT_MASKING = ("zero_gradients", "black_box_beats_white_box")


def untrustworthy(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failed checks (as stored in a report) that make the robust accuracy untrustworthy: every error and
    every gradient-masking sign."""
    return [c for c in checks if c["level"] == "error"
            or (c["level"] != "ok" and c["name"].split(":")[0] in GRADIENT_MASKING)]


def announce(checks: list[Check]) -> None:
    """Emit a Python warning for every check that is not ok."""
    for c in checks:
        if c.level != "ok":
            warnings.warn(f"[{c.level}] {c.name}: {c.message}", RuntimeWarning, stacklevel=3)
