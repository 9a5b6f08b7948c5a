#!/usr/bin/env python
"""Benchmark (not a timed test): per-step cost of the weight perturbations relative to their base step.

Every contender is one ``Trainer.train_step`` (attack + [perturbation] + objective + backward + SGD step) on its own
deep copy of one initial PreActResNet-18 and the same CIFAR-10-shaped batch, all in one process. Contenders are
interleaved in every repeat (the order rotates from repeat to repeat) so that load from other processes hits all of
them alike; reported are the median seconds per step and the median of the per-repeat paired ratios (contender /
its base of the same repeat) with their range.

Contenders (L∞ ε = 8/255):
  pgd          PGD-10 AT, step 2/255, BatchNorm in train mode (the base of the next two)
  pgd_awp      pgd + AWP γ = 0.01: one ascent forward/backward            target ≤ 1.15× pgd
  pgd_rwp      pgd + RWP γ = 0.01, c_min 1.7, 10 ascent steps
  fgsm_rs      FGSM-RS, step 1.25ε (the base of R-LAP)
  lap          fgsm_rs + LAP (paper behaviour, β 0.002): one extra forward/backward at the start point
  lap_code     fgsm_rs + LAP (official-code behaviour): the same plus an optimiser step on saved state

Examples:
    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_perturbation.py --threads 1 --out results/benchmarks/perturbation.md
    python scripts/bench_perturbation.py --data-root data/cifar10 --only pgd_awp
"""
from __future__ import annotations

import argparse
import copy
import sys
from typing import Any, Callable

import torch

from robustrain.attacks import build_attack
from robustrain.benchmarking import (CIFAR10_MEAN, CIFAR10_STD, EPS, load_avg, load_batch, machine, paired_ratio_rows,
                                     ratio_rows, run_interleaved, step_benchmark_parser, write_report)
from robustrain.models import create_model
from robustrain.perturbation import build_weight_perturbation
from robustrain.threat import make_threat
from robustrain.training import LRSchedule, Trainer

SPECS: dict[str, tuple[str, dict, tuple[str, dict] | None]] = {  # name → (base, attack, perturbation)
    "pgd": ("pgd", {"name": "pgd", "steps": 10, "step": 2 / 255, "keep_best": False}, None),
    "pgd_awp": ("pgd", {"name": "pgd", "steps": 10, "step": 2 / 255, "keep_best": False}, ("awp", {"gamma": 0.01})),
    "pgd_rwp": ("pgd", {"name": "pgd", "steps": 10, "step": 2 / 255, "keep_best": False},
                ("rwp", {"gamma": 0.01, "c_min": 1.7, "steps": 10})),
    "fgsm_rs": ("fgsm_rs", {"name": "fgsm_rs"}, None),
    "lap": ("fgsm_rs", {"name": "fgsm_rs"}, ("lap", {"variant": "fgsm_rs"})),
    "lap_code": ("fgsm_rs", {"name": "fgsm_rs"}, ("lap", {"variant": "fgsm_rs", "behaviour": "code"})),
}
TARGETS = {"pgd_awp": 1.15}
NOTES = """Pass accounting (F = one forward of the batch; a weight-gradient backward ≈ 2F; the attacks' input-only
backward ≈ 1F because they freeze the parameters): a PGD-10 AT step is 10 × 2F + 3F = 23F.

- AWP adds one forward and one weight-gradient backward: 26F / 23F ≈ **1.13×** (the paper's logs: +9 %, with an
  attack backward that also computes weight gradients).
- RWP adds ten of them: 53F / 23F ≈ **2.3×** (the spec's 1.9× counts every backward alike).
- LAP adds one forward/backward at the attack's start point to an FGSM-RS step (5F): 8F / 5F ≈ **1.6×**; the
  official code shares that pass with the attack (its attack backward computes weight gradients anyway), which
  the attacks here do not, so the extra pass is the price of attacks that never touch parameter gradients.
  The official-code behaviour adds an optimiser step and two state copies (parameters and momentum).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = step_benchmark_parser(__doc__, warmup=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="*", choices=list(SPECS), help="contenders to run (their bases always run)")
    return p.parse_args(argv)


def contenders(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor,
               y: torch.Tensor) -> dict[str, Callable[[], Any]]:
    threat = make_threat("linf", EPS)
    keep = set(args.only or SPECS)
    keep |= {SPECS[n][0] for n in keep}
    out: dict[str, Callable[[], Any]] = {}
    for name, (_, attack_spec, wp_spec) in SPECS.items():
        if name not in keep:
            continue
        m = copy.deepcopy(model)
        attack = build_attack(attack_spec["name"], threat, bn_mode="train",
                              **{k: v for k, v in attack_spec.items() if k != "name"})
        wp = build_weight_perturbation(wp_spec[0], threat, **wp_spec[1]) if wp_spec else None
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        sched = LRSchedule("constant", 0.01, 10_000, 100)
        trainer = Trainer(m, attack, opt, sched, [None] * 100, epochs=1, weight_perturbation=wp, seed=args.seed)
        out[name] = (lambda tr=trainer: tr.train_step(x, y))
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = (t.to(args.device) for t in load_batch(args.batch, args.seed, args.data_root))
    torch.manual_seed(args.seed)
    model = create_model("preact_resnet18", num_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         width=args.width).to(args.device)
    runs = contenders(args, model, x, y)
    load_start = load_avg() or [float("nan")]
    times, _ = run_interleaved(runs, args.warmup, args.repeats, "train step", device=args.device, progress=True)
    load_end = load_avg() or [float("nan")]
    rows = paired_ratio_rows(times, {n: SPECS[n][0] for n in runs}, TARGETS)
    cmd = "python scripts/bench_perturbation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else machine(args.threads)
    lines = [
        "# Per-step cost of the weight perturbations relative to their base step", "",
        f"- command: `{cmd.strip()}`",
        f"- model: PreActResNet-18 width {args.width}, batch {args.batch}, "
        f"{'CIFAR-10 training images' if args.data_root else 'uniform random 3x32x32 images'}, L∞ ε = 8/255, fp32, "
        "SGD; one `Trainer.train_step` per call",
        f"- machine: {device}, torch {torch.__version__}; load average {load_start[0]:.2f} at start, "
        f"{load_end[0]:.2f} at end",
        f"- {args.warmup} untimed warm-up step(s), then {args.repeats} interleaved repeats (rotating order); "
        "ratio = contender / its base of the same repeat", "",
        "| contender | base | median s/step | ratio (median of paired) | ratio range | ratio of fastest | target |",
        "|---|---|---|---|---|---|---|",
    ]
    write_report(args, lines + ratio_rows(rows, base_column=True) + ["", NOTES], times, rows)


if __name__ == "__main__":
    main()
