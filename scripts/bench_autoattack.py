#!/usr/bin/env python
"""Benchmark (not a timed test): robustrain's AutoAttack evaluation against torchattacks' own ``AutoAttack``.

Both run standard AutoAttack (L∞, ε = ``--eps``) with the same iteration counts (APGD-CE 100 iterations, APGD-T 9
targets x 100, FAB-T 9 targets x 100, Square 5,000 queries; torchattacks' components default to 10 iterations
and are set to 100 here) on the same model and the same CIFAR-10 test images, in one process, interleaved
(robustrain, torchattacks, then torchattacks, robustrain, ...) so load from other processes hits both alike.

robustrain's number includes what torchattacks' does not do: the cascade bookkeeping, the per-batch threat-model
check of every adversarial example, the sanity checks before and after, and the per-batch state file (written
to a temporary folder). torchattacks' ``AutoAttack`` keeps two settings of its own: Square with
``resc_schedule=True`` (the official code uses False) and a fresh time-based seed unless one is given (0 here).

The model: a full PreActResNet-18 with 1,000 images x standard AutoAttack takes hours on a contended 2-core CPU,
so this uses robustrain's ``small_cnn`` (conv 16 - conv 32 - fc 100, ~0.2 M parameters) briefly trained on the
first ``--train-subset`` CIFAR-10 training images: by default without attack (``--train-eps 0``), because FGSM-RS
at 4/255 or 8/255 collapsed this small CNN to a constant classifier within 3 epochs (the sanity checks flag such a
model: near-chance clean accuracy, zero input gradients). The cost of the later stages depends on how many points
stay robust, so the radius (``--eps``) should leave some: 2/255 for this model.

Example:
    python /work/shared/data/get_cifar10.py data/cifar10
    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_autoattack.py --data-root data/cifar10 --eps 2/255 \\
        --n-ex 500 --batch-size 250 \\
        --json results/benchmarks/autoattack.json --md results/benchmarks/autoattack.md
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchattacks  # imported once here, so neither contender pays its ~5 s import

from robustrain.config import parse_number
from robustrain.data import BatchLoader, first_examples, load_dataset
from robustrain.evaluation import EvalPlan, evaluate_robustness
from robustrain.benchmarking import publish, stamp
from robustrain.models import create_model
from robustrain.threat import make_threat
from robustrain.training import FGSMTrainer, LRSchedule



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="folder holding cifar-10-batches-bin/")
    p.add_argument("--n-ex", type=int, default=1000, help="CIFAR-10 test images (the first ones)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=1, help="passes over the images (each interleaved per chunk)")
    p.add_argument("--eps", type=str, default="8/255", help="evaluation radius (L∞), e.g. 2/255")
    p.add_argument("--train-eps", type=str, default="0", help="FGSM-RS training radius; 0 = plain training")
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path)
    return p.parse_args(argv)


def train_model(args, train_ds) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(args.seed)
    model = create_model("small_cnn", num_classes=10, in_channels=3, mean=train_ds.mean, std=train_ds.std,
                         input_size=32)
    loader = BatchLoader(train_ds.subset(torch.arange(args.train_subset)), 128, shuffle=True, seed=args.seed,
                         augment="crop_flip")
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    sched = LRSchedule("cyclic", 0.02, args.epochs * len(loader), len(loader), peak=0.4)
    t0 = time.perf_counter()
    FGSMTrainer(model, make_threat("linf", args.train_eps), opt, sched, loader, epochs=args.epochs, seed=args.seed).fit()
    return model.eval(), time.perf_counter() - t0


def run_robustrain(model, x, y, args) -> dict:
    plan = EvalPlan(make_threat("linf", args.eps), attacks=["clean", "autoattack"], batch_size=args.batch_size,
                    seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report, _ = evaluate_robustness(model, x, y, plan, num_classes=10, out_dir=Path(tmp))
        wall = time.perf_counter() - t0
    return {"seconds": wall, "robust_acc": report["accuracy"]["autoattack"], "clean_acc": report["accuracy"]["clean"],
            "per_stage_seconds": report["runtime"]["per_stage"],
            "per_stage_acc": {s["name"]: s["robust_acc"] for s in report["stages"]},
            "sanity": {c["name"]: c["level"] for c in report["sanity"]["checks"]}}


def run_torchattacks(model, x, y, args) -> dict:
    atk = torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version="standard", n_classes=10, seed=args.seed)
    for a in atk._autoattack.attacks:  # NOTE: torchattacks' components default to 10 iterations; the standard is 100
        if hasattr(a, "steps"):
            a.steps = 100
    settings = [f"{type(a).__name__}(steps={getattr(a, 'steps', None)}, queries={getattr(a, 'n_queries', None)})"
                for a in atk._autoattack.attacks]
    correct = []
    t0 = time.perf_counter()
    for i in range(0, len(y), args.batch_size):
        xb, yb = x[i:i + args.batch_size], y[i:i + args.batch_size]
        adv = atk(xb, yb)
        with torch.no_grad():
            correct.append(model(adv).argmax(1) == yb)
    wall = time.perf_counter() - t0
    return {"seconds": wall, "robust_acc": torch.cat(correct).float().mean().item(), "settings": settings}


def main(argv=None) -> int:
    args = parse_args(argv)
    args.eps, args.train_eps = parse_number(args.eps, "--eps"), parse_number(args.train_eps, "--train-eps")
    torch.set_num_threads(args.threads)
    train_ds = load_dataset("cifar10", args.data_root, "train")
    test_ds = load_dataset("cifar10", args.data_root, "test")
    model, train_seconds = train_model(args, train_ds)
    x, y = first_examples(BatchLoader(test_ds, args.batch_size, shuffle=False), args.n_ex)
    print(f"model trained in {train_seconds:.0f} s; evaluating {len(y)} images", file=sys.stderr, flush=True)
    runs = {"robustrain": [], "torchattacks": []}
    contenders = {"robustrain": run_robustrain, "torchattacks": run_torchattacks}
    chunks = [(i, min(i + args.batch_size, len(y))) for i in range(0, len(y), args.batch_size)]
    for r in range(args.repeats):
        for c, (lo, hi) in enumerate(chunks):  # the order alternates from chunk to chunk (and repeat to repeat)
            order = ["robustrain", "torchattacks"] if (r + c) % 2 == 0 else ["torchattacks", "robustrain"]
            for name in order:
                res = contenders[name](model, x[lo:hi], y[lo:hi], args)
                res.update(repeat=r, chunk=c, n=hi - lo)
                runs[name].append(res)
                print(f"repeat {r} chunk {c} {name}: {res['seconds']:.1f} s, robust acc "
                      f"{100 * res['robust_acc']:.2f}%", file=sys.stderr, flush=True)
    summary = {}
    for name, rs in runs.items():
        per_repeat = [sum(x["seconds"] for x in rs if x["repeat"] == r) for r in range(args.repeats)]
        robust = [sum(x["robust_acc"] * x["n"] for x in rs if x["repeat"] == r) / len(y) for r in range(args.repeats)]
        med = statistics.median(per_repeat)
        summary[name] = {"median_seconds": med, "images_per_s": len(y) / med, "robust_acc": robust,
                         "seconds": per_repeat}
    ratios = [t["seconds"] / r["seconds"] for r, t in zip(runs["robustrain"], runs["torchattacks"])]
    out = {
        "what": f"standard AutoAttack, Linf eps {args.eps * 255:g}/255, 100 iterations, Square 5000 queries",
        "n_ex": len(y),
        "batch_size": args.batch_size, "threads": args.threads,
        "model": {"name": "small_cnn (conv16-conv32-fc100)", "params": sum(p.numel() for p in model.parameters()),
                  "training": (f"FGSM-RS eps {args.train_eps * 255:g}/255" if args.train_eps else "plain (no attack)")
                  + f", SGD lr 0.02 cyclic, {args.epochs} epochs on the first {args.train_subset} CIFAR-10 training "
                    f"images, crop+flip, seed {args.seed}", "train_seconds": train_seconds},
        "summary": summary, "paired_ratio_torchattacks_over_robustrain": ratios, "runs": runs,
        "interleaving": f"chunks of {args.batch_size} images; per chunk both contenders, order alternating",
        "machine": f"{platform.processor() or platform.machine()}, 2-core CPU shared with other jobs (contended)",
        **stamp(),
    }
    publish(out, render_md, args.json, args.md)
    return 0


def render_md(o: dict) -> str:
    rr, ta = o["summary"]["robustrain"], o["summary"]["torchattacks"]
    r0 = o["runs"]["robustrain"][0]
    lines = [
        "# AutoAttack evaluation speed: robustrain vs torchattacks' AutoAttack (CPU)",
        "",
        f"{o['what']}; {o['n_ex']} CIFAR-10 test images (the first ones), batch size {o['batch_size']}, "
        f"{o['threads']} thread(s), under nice on a {o['machine']}.",
        f"Model: {o['model']['name']}, {o['model']['params']:,} parameters, {o['model']['training']} "
        f"({o['model']['train_seconds']:.0f} s). Both contenders in one process, interleaved ({o['interleaving']}).",
        "",
        "| contender | median wall (s) | images/s | robust acc (%) | runs (s) |",
        "|---|---|---|---|---|",
        f"| robustrain eval (torchattacks backend) | {rr['median_seconds']:.1f} | {rr['images_per_s']:.2f} | "
        f"{', '.join(f'{100 * a:.2f}' for a in rr['robust_acc'])} | {', '.join(f'{s:.1f}' for s in rr['seconds'])} |",
        f"| torchattacks.AutoAttack, steps set to 100 | {ta['median_seconds']:.1f} | {ta['images_per_s']:.2f} | "
        f"{', '.join(f'{100 * a:.2f}' for a in ta['robust_acc'])} | {', '.join(f'{s:.1f}' for s in ta['seconds'])} |",
        "",
        "Paired ratio torchattacks / robustrain per chunk (both on the same images, back to back): "
        + ", ".join(f"{r:.2f}" for r in o["paired_ratio_torchattacks_over_robustrain"]),
        "",
        f"robustrain per stage (first chunk of {r0['n']} images): clean accuracy {100 * r0['clean_acc']:.2f}%; "
        + "; ".join(f"{k} {100 * r0['per_stage_acc'][k]:.2f}% in {v:.1f} s" for k, v in r0["per_stage_seconds"].items()),
        "",
        f"Command: `{' '.join(o['argv'])}`; commit {o['git_commit']}; torch {o['torch']}; {o['date']}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
