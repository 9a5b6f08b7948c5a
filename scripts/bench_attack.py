#!/usr/bin/env python
"""Benchmark (not a timed test): robustrain's attack path against the usual baselines, on one machine.

Two comparisons, each on the same model and the same batch, in one process, with the contenders
interleaved in every repeat (the order rotates from repeat to repeat) so that load from other processes
hits all of them alike:

1. PGD-10, L-inf, eps = 8/255, step 2/255, one random start, model in eval mode:
   ``torchattacks.PGD`` against robustrain's ``PGD(keep_best=False)`` (the same work: last iterate, one
   restart), robustrain's default ``PGD`` (keep_best=True, one extra forward plus bookkeeping) and, with
   ``--compile``, ``PGD(keep_best=False, compile=True)``.
2. One FGSM-RS training step (attack + training forward/backward + SGD step): a plain hand-written loop
   in the style of locuslab/fast_adversarial's train_fgsm.py (``loss.backward()`` in the attack, so the
   weight gradients are computed too; model in train mode throughout) against robustrain's
   ``FGSMTrainer.train_step`` and, with ``--compile``, the same trainer with ``attack_kwargs={"compile": True}``.
   Every contender gets its own deep copy of the same initial model and its own SGD optimiser.

Reported: median seconds per call and images/s per contender, per-repeat paired ratios (baseline
time / contender time) with their median and range, the ratio of the fastest runs, and the CPU that other
processes used during each repeat (on a shared machine, ``--threads 1`` is far less disturbed by them
than two threads on two busy cores, and ``--wait-idle`` waits for a quiet moment before each repeat).

Examples:
    python scripts/bench_attack.py                         # random data, contiguous model, eager + compile
    python scripts/bench_attack.py --channels-last          # the model built with channels_last=True
    python /work/shared/data/get_cifar10.py data && python scripts/bench_attack.py --data cifar10 --data-root data
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from robustrain.attacks import PGD
from robustrain.benchmarking import (CIFAR10_MEAN, CIFAR10_STD, EPS, FGSM_STEP, PGD_STEP, OneBatch, environment,
                                     handwritten_fgsm_step, load_avg, load_batch, run_interleaved, sgd, summarise)
from robustrain.models import create_model
from robustrain.threat import make_threat
from robustrain.training import FGSMTrainer, LRSchedule



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16, help="PreActResNet-18 width (64 in the papers)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7, help="timed PGD repeats per contender")
    p.add_argument("--train-repeats", type=int, default=None,
                   help="timed training-step repeats per contender (default 3 x --repeats)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per contender before timing")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data", choices=("random", "cifar10"), default="random")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding cifar-10-batches-bin/ (python /work/shared/data/get_cifar10.py DEST)")
    p.add_argument("--channels-last", action="store_true", help="build the model with channels_last=True")
    p.add_argument("--compile", dest="compile", action="store_true", default=True,
                   help="also time robustrain with compile=True (default)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--only", choices=("pgd", "train"), default=None, help="run one of the two comparisons")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each repeat wait up to SECONDS until other processes use < 0.1 core "
                        "(a shared machine); every repeat records the CPU other processes used during it")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA robustrain's PGD is also timed with the "
                                                     "reference step, ROBUSTRAIN_KERNELS=reference, beside the fused one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the numbers to this file")
    p.add_argument("--report", type=Path, nargs="+", default=None, metavar="JSON",
                   help="print the markdown tables of earlier --json files (and, for several, their median "
                        "ratios side by side) and exit; measures nothing")
    return p.parse_args(argv)


# -- data and model ----------------------------------------------------------------------------------
def batch_of(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    if args.data == "cifar10" and args.data_root is None:
        sys.exit("--data cifar10 needs --data-root (build it with: python /work/shared/data/get_cifar10.py DEST)")
    return load_batch(args.batch, args.seed, args.data_root if args.data == "cifar10" else None)


def make_model(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    return create_model("preact_resnet18", num_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                        width=args.width, channels_last=args.channels_last)


# -- contenders --------------------------------------------------------------------------------------
def pgd_contenders(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor,
                   y: torch.Tensor) -> dict[str, Callable[[], object]]:
    import torchattacks

    threat = make_threat("linf", EPS)
    ta = torchattacks.PGD(model, eps=EPS, alpha=PGD_STEP, steps=args.steps, random_start=True)
    last = PGD(threat, steps=args.steps, step=PGD_STEP, keep_best=False)
    best = PGD(threat, steps=args.steps, step=PGD_STEP)  # keep_best=True, the default
    gen = torch.Generator(device=x.device).manual_seed(args.seed)
    out: dict[str, Callable[[], object]] = {
        "torchattacks.PGD": lambda: ta(x, y),
        "robustrain PGD keep_best=False": lambda: last(model, x, y, generator=gen),
        "robustrain PGD keep_best=True": lambda: best(model, x, y, generator=gen),
    }
    if x.device.type == "cuda":  # the fused Triton step is the default there; the eager reference step beside it
        from robustrain import kernels

        def reference_step() -> object:
            os.environ[kernels.ENV_VAR] = "reference"
            try:
                return last(model, x, y, generator=gen)
            finally:
                os.environ.pop(kernels.ENV_VAR, None)

        out["robustrain PGD keep_best=False kernels=reference"] = reference_step
    if args.compile:
        comp = PGD(threat, steps=args.steps, step=PGD_STEP, keep_best=False, compile=True)
        out["robustrain PGD keep_best=False compile=True"] = lambda: comp(model, x, y, generator=gen)
        comp_best = PGD(threat, steps=args.steps, step=PGD_STEP, compile=True)
        out["robustrain PGD keep_best=True compile=True"] = lambda: comp_best(model, x, y, generator=gen)
    return out


def train_contenders(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor,
                     y: torch.Tensor) -> dict[str, Callable[[], object]]:
    threat = make_threat("linf", EPS)
    hand = copy.deepcopy(model).train()
    hand_opt = sgd(hand)
    out: dict[str, Callable[[], object]] = {
        "hand-written FGSM-RS step (full backward in attack)": lambda: handwritten_fgsm_step(hand, hand_opt, x, y),
    }
    variants = [("robustrain FGSMTrainer.train_step", {})]
    if args.compile:
        variants.append(("robustrain FGSMTrainer.train_step compile=True", {"compile": True}))
    for name, attack_kwargs in variants:
        m = copy.deepcopy(model).train()
        schedule = LRSchedule("constant", 0.01, total_steps=10**9, steps_per_epoch=1)
        trainer = FGSMTrainer(m, threat, sgd(m), schedule, OneBatch(), variant="fgsm_rs", epochs=1,
                              seed=args.seed, attack_kwargs=attack_kwargs)
        assert abs(trainer.attack.step - FGSM_STEP) < 1e-12
        out[name] = (lambda t: lambda: t.train_step(x, y))(trainer)
    return out


def print_table(title: str, summary: dict[str, dict], baseline: str, target: float | None) -> None:
    print(f"\n{title} (baseline: {baseline})")
    w = max(len(n) for n in summary)
    print(f"  {'contender':{w}s}  {'median s':>9s}  {'img/s':>7s}  {'ratio med':>9s}  {'ratio range':>13s}"
          f"  {'ratio of min':>12s}")
    for name, s in summary.items():
        r = s["ratio_vs_baseline"]
        flag = ""
        if target is not None and name != baseline:
            flag = f"  {'>=' if r['median'] >= target else '<'} target {target}"
        print(f"  {name:{w}s}  {s['median_s']:9.3f}  {s['images_per_s']:7.1f}  {r['median']:9.3f}  "
              f"{'[' + format(r['min'], '.2f') + ', ' + format(r['max'], '.2f') + ']':>13s}  "
              f"{r['of_fastest_runs']:12.3f}{flag}")


def markdown_report(paths: list[Path]) -> str:
    """Markdown tables of one or more ``--json`` files (what results/benchmarks/attack.md shows)."""
    lines: list[str] = []
    for path in paths:
        run = json.loads(path.read_text())
        env, a = run["environment"], run["args"]
        lines += [f"### `{path.name}`: {'channels_last' if a['channels_last'] else 'contiguous'} model, "
                  f"{env['threads']} thread(s), data {a['data']}", "",
                  f"Command: `python {run['command']}`  ",
                  f"torch {env['torch']}, torchattacks {env['torchattacks']}, CPU {env['cpu_model']} "
                  f"({env['cpu_count']} cores), load avg {env['load_avg_start']} -> {env.get('load_avg_end')}, "
                  f"wall {run['wall_s']:.0f} s", ""]
        for key, title in (("pgd", f"PGD-{a['steps']}, eval mode"), ("train", "FGSM-RS training step")):
            if key not in run:
                continue
            sec = run[key]
            others = sec.get("other_process_cores", [])
            lines += [f"{title}: {sec['repeats']} interleaved repeats; baseline `{sec['baseline']}`; target "
                      f"{sec['target']}x; cores used by other processes per repeat: median "
                      f"{statistics.median(others) if others else float('nan'):.2f}", "",
                      "| contender | median s [min, max] | images/s (median) | ratio, median [min, max] | "
                      "ratio of fastest runs | target |",
                      "|---|---|---|---|---|---|"]
            for name, c in sec["contenders"].items():
                r = c["ratio_vs_baseline"]
                hit = "" if name == sec["baseline"] else ("reached" if r["median"] >= sec["target"] else "not reached")
                lines.append(f"| {name} | {c['median_s']:.3f} [{c['min_s']:.3f}, {c['max_s']:.3f}] | "
                             f"{c['images_per_s']:.1f} | {r['median']:.3f} [{r['min']:.2f}, {r['max']:.2f}] | "
                             f"{r['of_fastest_runs']:.3f} | {hit} |")
            lines.append("")
    return "\n".join(lines)


def markdown_summary(paths: list[Path]) -> str:
    """One row per contender, one column per ``--json`` file: the median ratios side by side."""
    runs = [json.loads(p.read_text()) for p in paths]
    names: list[tuple[str, str]] = []
    for run in runs:
        for key in ("pgd", "train"):
            for name in run.get(key, {}).get("contenders", {}):
                if name != run[key]["baseline"] and (key, name) not in names:
                    names.append((key, name))
    head = [f"`{p.parent.name}/{p.name}`" if p.parent.name != "benchmarks" else f"`{p.name}`" for p in paths]
    lines = ["| median ratio vs baseline | " + " | ".join(head) + " |", "|---" * (len(paths) + 1) + "|"]
    for key, name in names:
        cells = []
        for run in runs:
            c = run.get(key, {}).get("contenders", {}).get(name)
            cells.append("" if c is None else f"{c['ratio_vs_baseline']['median']:.3f}")
        lines.append(f"| {key}: {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(markdown_report(args.report))
        if len(args.report) > 1:
            print(markdown_summary(args.report))
        return 0
    torch.set_num_threads(args.threads)
    train_repeats = args.train_repeats if args.train_repeats is not None else 3 * args.repeats
    env = environment()
    print(f"torch {env['torch']}, torchattacks {env['torchattacks']}, threads {env['threads']} "
          f"(cpu_count {env['cpu_count']}), CPU: {env['cpu_model']}, load avg {env['load_avg_start']}")
    print(f"PreActResNet-18 width {args.width}, batch {args.batch}, data {args.data}, "
          f"channels_last {args.channels_last}, compile {args.compile}")
    x, y = (t.to(args.device) for t in batch_of(args))
    model = make_model(args).to(args.device)
    result: dict = {"command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "environment": env}
    t_start = time.perf_counter()

    if args.only in (None, "pgd"):
        model.eval()
        baseline = "torchattacks.PGD"
        times, others = run_interleaved(pgd_contenders(args, model, x, y), args.warmup, args.repeats, "pgd",
                                        args.wait_idle, device=args.device)
        result["pgd"] = {"baseline": baseline, "target": 1.15, "repeats": args.repeats,
                         "other_process_cores": others, "contenders": summarise(times, baseline, args.batch)}
        print_table(f"PGD-{args.steps} L-inf 8/255, model in eval mode, {args.repeats} repeats",
                    result["pgd"]["contenders"], baseline, 1.15)

    if args.only in (None, "train"):
        baseline = "hand-written FGSM-RS step (full backward in attack)"
        times, others = run_interleaved(train_contenders(args, model, x, y), args.warmup, train_repeats,
                                        "train", args.wait_idle, device=args.device)
        result["train"] = {"baseline": baseline, "target": 1.25, "repeats": train_repeats,
                           "other_process_cores": others, "contenders": summarise(times, baseline, args.batch)}
        print_table(f"FGSM-RS training step, {train_repeats} repeats", result["train"]["contenders"],
                    baseline, 1.25)

    result["environment"]["load_avg_end"] = load_avg()
    result["wall_s"] = time.perf_counter() - t_start
    print(f"\nload avg at the end {result['environment']['load_avg_end']}; wall {result['wall_s']:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
