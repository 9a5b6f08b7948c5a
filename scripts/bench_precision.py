#!/usr/bin/env python
"""Benchmark (not a timed test): one FGSM-RS training step in fp32, bf16 autocast and channels_last, on one machine.

The contenders are robustrain's ``FGSMTrainer.train_step`` (attack + training forward/backward + SGD step) on deep
copies of the same initial narrow PreActResNet-18, on the same CIFAR-shaped batch, in one process, interleaved in
every repeat (the order rotates) so that load from other processes hits all of them alike:

* ``fp32``: contiguous model, no autocast (the baseline);
* ``bf16``: ``amp_dtype=torch.bfloat16`` for the attack's forward and the training forward/backward (δ stays fp32);
* ``channels_last``: the model built with ``channels_last=True`` (inputs as the loader serves them, contiguous);
* ``bf16+channels_last``: both;
* with ``--compile`` also ``compile``: the trainer's ``compile=True`` (``train.compile``), fp32 contiguous.

Reported: median seconds per step, images/s and the per-repeat paired ratios fp32 time / contender time (median
and range). The timing helpers are those of :mod:`robustrain.benchmarking`.

Example:
    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_precision.py --threads 1 --json results/benchmarks/precision_cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from robustrain.benchmarking import (CIFAR10_MEAN, CIFAR10_STD, EPS, OneBatch, environment, git_commit, load_avg,
                                     run_interleaved, sgd, summarise)
from robustrain.models import create_model
from robustrain.threat import make_threat
from robustrain.training import FGSMTrainer, LRSchedule

BASELINE = "fp32"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=16, help="PreActResNet-18 width (64 in the papers)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time train.compile (fp32; slow warm-up on CPU)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="time only these contenders (fp32 is always timed: it is the baseline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def contenders(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> dict:
    threat = make_threat("linf", EPS)
    variants = [("fp32", None, False, False), ("bf16", torch.bfloat16, False, False),
                ("channels_last", None, True, False), ("bf16+channels_last", torch.bfloat16, True, False)]
    if args.compile:
        variants.append(("compile", None, False, True))
    if args.variants:
        variants = [v for v in variants if v[0] == BASELINE or v[0] in args.variants]
    out = {}
    for name, amp, channels_last, compile_ in variants:
        torch.manual_seed(args.seed)  # the same initial weights for every contender
        model = create_model("preact_resnet18", num_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                             width=args.width, channels_last=channels_last).train()
        schedule = LRSchedule("constant", 0.01, total_steps=10**9, steps_per_epoch=1)
        trainer = FGSMTrainer(model, threat, sgd(model), schedule, OneBatch(), variant="fgsm_rs", epochs=1,
                              seed=args.seed, amp_dtype=amp, compile=compile_)
        out[name] = (lambda t: lambda: t.train_step(x, y))(trainer)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 3, 32, 32, generator=gen)  # speed does not depend on the pixel values
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    t0 = time.time()
    env = environment()
    times, others = run_interleaved(contenders(args, x, y), args.warmup, args.repeats, "train step")
    summary = summarise(times, BASELINE, args.batch)
    env["load_avg_end"] = load_avg()
    print(f"\nFGSM-RS training step, PreActResNet-18 width {args.width}, batch {args.batch}, {args.threads} thread(s)")
    print(f"  {'contender':20s}  {'median s':>9s}  {'img/s':>7s}  {'fp32/contender (median [min, max])':>36s}")
    for name, s in summary.items():
        r = s["ratio_vs_baseline"]
        print(f"  {name:20s}  {s['median_s']:9.3f}  {s['images_per_s']:7.1f}  "
              f"{r['median']:>14.3f} [{r['min']:.2f}, {r['max']:.2f}]")
    if args.json:
        commit = git_commit()
        args.json.write_text(json.dumps({
            "command": " ".join(["scripts/bench_precision.py", *(argv if argv is not None else sys.argv[1:])]),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "git_commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": env, "other_process_cores": others, "wall_s": time.time() - t0,
            "train": summary}, indent=2))
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
