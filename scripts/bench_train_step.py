#!/usr/bin/env python
"""Benchmark (not a timed test): robustrain's training step, eager and compiled, against hand-written loops.

Two groups, each on deep copies of the same initial PreActResNet-18 (CIFAR-10 mean/std inside), on the same batch,
in one process, every contender once per repeat with the order rotating (load from other processes hits all
alike); the timing helpers are those of :mod:`robustrain.benchmarking`:

1. FGSM-RS (ε 8/255, step 10/255): the hand-written step of locuslab/fast_adversarial's ``train_fgsm.py``
   (``robustrain.benchmarking.handwritten_fgsm_step``, as in ``scripts/bench_attack.py``: the attack's ``loss.backward()`` computes weight
   gradients too) on the eager model and on ``torch.compile(model)``, against ``FGSMTrainer.train_step`` eager and
   compiled (``compile=True``: the training step, forward + loss + backward, and the attack's ``compile``).
2. PGD-10 AT (ε 8/255, step 2/255, one random start): a hand-written Madry-style step in the style of
   locuslab/robust_overfitting's ``train_cifar.py`` (each attack step a full ``loss.backward()``), eager and on
   ``torch.compile(model)``, against ``PGDTrainer.train_step`` eager and compiled.

Every contender runs on the model as ``create_model`` builds it by default (contiguous) and, unless
``--no-channels-last``, also on a ``channels_last`` copy (``create_model(channels_last=True)``, the config's
``model.channels_last: true``; the batch stays contiguous, as the loader serves it), the hand-written loops included,
so the table separates what the layout gives any loop from what robustrain's step adds. The speed-ups are always
against the hand-written loops on the contiguous model, as the reference code runs them.

Reported per contender: median seconds per step, images/s, and the paired per-repeat speed-ups against the eager
hand-written step and against the compiled hand-written step (median [min, max]). Targets (issue 19): FGSM-RS
compiled ≥ 1.5× and eager ≥ 1.25× the hand-written step; PGD-10 compiled ≥ 2.0×.

Example:
    flock /tmp/team/cpu.lock python scripts/bench_train_step.py --threads 2 --repeats 7 \\
        --data-root data/cifar10 --out results/benchmarks/train_step.md
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from robustrain.benchmarking import (CIFAR10_MEAN, CIFAR10_STD, EPS, FGSM_STEP, PGD_STEP, OneBatch, environment,
                                     handwritten_fgsm_step, handwritten_pgd_step, load_avg, load_batch,
                                     run_interleaved, sgd, step_benchmark_parser, write_report)
from robustrain.models import create_model
from robustrain.threat import make_threat
from robustrain.training import FGSMTrainer, LRSchedule, PGDTrainer

TARGETS = {"fgsm_rs": {"robustrain eager": 1.25, "robustrain compiled": 1.5}, "pgd10": {"robustrain compiled": 2.0}}


def target_of(group: str, name: str) -> float | None:
    """The issue-19 target of a contender (the same for both layouts of robustrain's step)."""
    return TARGETS[group].get(name.removesuffix(", channels_last"))


def contenders(args, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               group: str) -> dict[str, Callable[[], object]]:
    threat = make_threat("linf", EPS)
    out: dict[str, Callable[[], object]] = {}
    hand_fn = handwritten_fgsm_step if group == "fgsm_rs" else handwritten_pgd_step
    layouts = ("contiguous", "channels_last") if args.channels_last else ("contiguous",)
    for layout, who, compiled in [(layout, who, compiled) for who in ("hand-written", "robustrain")
                                  for layout in layouts for compiled in (False, True)]:
        name = f"{who} {'compiled' if compiled else 'eager'}" + ("" if layout == "contiguous" else f", {layout}")
        m = copy.deepcopy(model).train()
        if layout == "channels_last":  # what create_model(channels_last=True) (model.channels_last: true) does
            m = m.to(memory_format=torch.channels_last)
        if who == "hand-written":
            opt = sgd(m)
            fwd = torch.compile(m) if compiled else m
            out[name] = (lambda f, o: lambda: hand_fn(f, o, x, y))(fwd, opt)
            continue
        schedule = LRSchedule("constant", 0.01, total_steps=10**9, steps_per_epoch=1)
        kw = dict(epochs=1, seed=args.seed, compile=compiled, attack_kwargs={"compile": compiled})
        if group == "fgsm_rs":
            trainer = FGSMTrainer(m, threat, sgd(m), schedule, OneBatch(), variant="fgsm_rs", **kw)
            assert abs(trainer.attack.step - FGSM_STEP) < 1e-12
        else:
            trainer = PGDTrainer(m, threat, sgd(m), schedule, OneBatch(), steps=10, step=PGD_STEP, **kw)
        out[name] = (lambda t: lambda: t.train_step(x, y))(trainer)
    return out


def speedups(times: dict[str, list[float]], base: str) -> dict[str, dict]:
    out = {}
    for name, ts in times.items():
        r = [b / t for b, t in zip(times[base], ts)]
        out[name] = {"median": statistics.median(r), "min": min(r), "max": max(r)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = step_benchmark_parser(__doc__, warmup=2)
    p.add_argument("--only", choices=("fgsm_rs", "pgd10"), default=None)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="time the contiguous models only (default: also every contender on a channels_last model)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each repeat wait up to SECONDS until other processes use < 0.1 core (a shared "
                        "machine); every repeat records the CPU other processes used during it either way")
    p.add_argument("--pgd-repeats", type=int, default=None, help="PGD-10 repeats (default: --repeats)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment()
    x, y = load_batch(args.batch, args.seed, args.data_root)
    torch.manual_seed(args.seed)
    model = create_model("preact_resnet18", num_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         width=args.width)
    command = " ".join(["python scripts/bench_train_step.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [f"# Training step: robustrain eager and compiled vs hand-written loops ({env['machine'] if 'machine' in env else env['cpu_model']})",
             "", f"commit {env['commit']} · {env['date_utc']} UTC · torch {env['torch']} · {args.threads} thread(s) · "
             f"load average at the start {env['load_avg_start']}", "", "```bash", command, "```", "",
             f"PreActResNet-18 width {args.width}, batch {args.batch} "
             f"({'CIFAR-10 training images' if args.data_root else 'uniform random images'}), SGD lr 0.01 momentum 0.9 "
             f"wd 5e-4, {args.warmup} untimed warm-up steps per contender (the compilation happens there). Speed-up = "
             "paired per-repeat ratio hand-written time (contiguous model) / contender time, median [min, max]. "
             "`, channels_last`: the contender on a channels_last copy of the model (`model.channels_last: true`), "
             "the batch contiguous.", ""]
    result, all_times = {}, {}
    t0 = time.perf_counter()
    for group in ("fgsm_rs", "pgd10"):
        if args.only not in (None, group):
            continue
        repeats = args.pgd_repeats or args.repeats if group == "pgd10" else args.repeats
        times, others = run_interleaved(contenders(args, model, x, y, group), args.warmup, repeats, group,
                                        args.wait_idle, progress=True)
        eager, comp = speedups(times, "hand-written eager"), speedups(times, "hand-written compiled")
        result[group] = {"repeats": repeats, "other_process_cores": others, "vs_eager": eager, "vs_compiled": comp}
        all_times[group] = times
        title = "FGSM-RS" if group == "fgsm_rs" else "PGD-10 AT"
        lines += [f"## {title} step, {repeats} repeats (CPU used by other processes per repeat: {others})", "",
                  "| contender | median s | images/s | × hand-written eager | × hand-written compiled | target |",
                  "|---|---|---|---|---|---|"]
        for name, ts in times.items():
            med = statistics.median(ts)
            target = target_of(group, name)
            met = "" if target is None else f"≥ {target:.2f}× " + ("✓" if eager[name]["median"] >= target else "✗")
            lines.append(f"| {name} | {med:.3f} | {args.batch / med:.0f} | {eager[name]['median']:.2f} "
                         f"[{eager[name]['min']:.2f}, {eager[name]['max']:.2f}] | {comp[name]['median']:.2f} "
                         f"[{comp[name]['min']:.2f}, {comp[name]['max']:.2f}] | {met} |")
        lines.append("")
    lines.append(f"load average at the end {load_avg()}; wall {time.perf_counter() - t0:.0f} s")
    write_report(args, lines, all_times, [{"group": g, **r} for g, r in result.items()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
