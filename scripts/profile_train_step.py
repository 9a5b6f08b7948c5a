#!/usr/bin/env python
"""Profile (not a timed test): where a training step's CPU time goes, robustrain's step against the hand-written loop.

For the FGSM-RS and PGD-10 steps of ``scripts/bench_train_step.py`` (same model, batch and baselines), each of
hand-written / robustrain on the contiguous and on a channels_last copy of the model, eager (and for FGSM-RS also
compiled), runs 2 untimed steps and then 3 steps under ``torch.profiler`` (CPU), and prints per step the self CPU
time (ms) by category: convolution forward (``aten::mkldnn_convolution``), convolution backward
(``aten::convolution_backward``), BatchNorm forward / backward, ReLU forward + backward, the optimiser, and the rest
(in a compiled step the rest holds inductor's fused kernels: BatchNorm, ReLU, normalisation, loss). The profiler
adds overhead; read the split, not the totals, and time with ``bench_train_step.py``.

Example:
    flock /tmp/team/cpu.lock python scripts/profile_train_step.py --data-root data/cifar10 \\
        --out results/benchmarks/train_step_profile.json
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from robustrain.benchmarking import (CIFAR10_MEAN, CIFAR10_STD, EPS, PGD_STEP, OneBatch, handwritten_fgsm_step,
                                     handwritten_pgd_step, load_batch, sgd)
from robustrain.models import create_model
from robustrain.threat import make_threat
from robustrain.training import FGSMTrainer, LRSchedule, PGDTrainer


def category(op: str) -> str:
    if "convolution_backward" in op:
        return "conv backward"
    if op == "aten::mkldnn_convolution":
        return "conv forward"
    if "batch_norm" in op and "backward" in op:
        return "BN backward"
    if "native_batch_norm" in op:
        return "BN forward"
    if op in ("aten::clamp_min", "aten::threshold_backward"):
        return "ReLU fwd+bwd"
    if op.startswith("Optimizer"):
        return "optimizer"
    return "other"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--groups", default="fgsm,pgd", help="comma-separated: fgsm, pgd")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", type=Path, default=None, help="JSON with the per-step milliseconds by category")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = load_batch(args.batch, 0, args.data_root)
    torch.manual_seed(0)
    model = create_model("preact_resnet18", num_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         width=args.width)
    threat = make_threat("linf", EPS)
    out = {}
    for group in args.groups.split(","):
        variants = [("hand", False, False), ("rr", False, False), ("hand", True, False), ("rr", True, False)]
        if group == "fgsm":
            variants += [("hand", False, True), ("rr", False, True), ("rr", True, True)]
        for who, channels_last, compiled in variants:
            m = copy.deepcopy(model).train()
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
            opt = sgd(m)
            if who == "hand":
                hand_fn = handwritten_fgsm_step if group == "fgsm" else handwritten_pgd_step
                fwd = torch.compile(m) if compiled else m
                step = (lambda f, o, fn: lambda: fn(f, o, x, y))(fwd, opt, hand_fn)
            else:
                schedule = LRSchedule("constant", 0.01, total_steps=10**9, steps_per_epoch=1)
                kw = dict(epochs=1, seed=0, compile=compiled, attack_kwargs={"compile": compiled})
                trainer = (FGSMTrainer(m, threat, opt, schedule, OneBatch(), variant="fgsm_rs", **kw) if group == "fgsm"
                           else PGDTrainer(m, threat, opt, schedule, OneBatch(), steps=10, step=PGD_STEP, **kw))
                step = (lambda t: lambda: t.train_step(x, y))(trainer)
            for _ in range(2):
                step()
            n = 3
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(n):
                    step()
            agg: collections.Counter = collections.Counter()
            for e in prof.key_averages():
                agg[category(e.key)] += e.self_cpu_time_total / 1000 / n
            key = f"{group} {who}{' cl' if channels_last else ''}{' comp' if compiled else ''}"
            out[key] = {k: round(v, 1) for k, v in agg.items()}
            out[key]["total"] = round(sum(agg.values()), 1)
            print(key, out[key], flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
