#!/usr/bin/env python
"""Benchmark (not a timed test): per-step cost of each regulariser relative to a plain FGSM training step.

Every contender is one ``Trainer.train_step`` (attack + objective + terms + backward + SGD step) on the same
model architecture (its own deep copy of one initial model, its own SGD optimiser) and the same batch, in one
process. Contenders are interleaved in every repeat (the order rotates from repeat to repeat) so that load from
other processes hits all of them alike; reported are the median seconds per step and the median of the
per-repeat paired ratios (contender / plain FGSM of the same repeat) with their range.

Contenders (CIFAR-10-sized batch, L∞ ε = 8/255, the paper defaults at that ε):
  fgsm                   zero-init FGSM, step ε (the reference)
  fgsm_rs                FGSM-RS, step 1.25ε (the base of RS-AAER; same passes as FGSM)
  elle / elle_a          fgsm + ELLE (λ 1000) / ELLE-A (λ_max 4000): one 3B triplet forward, single backprop
  gradalign              fgsm (1.25ε, projected) + GradAlign λ 0.2: double backprop
  aaer                   fgsm_rs + AAER (RS, λ2 2.5, λ3 1.5): reuses the attack's start-point forward
  convergesmooth         fgsm_rs (step ε, no projection) + ConvergeSmooth, gate open every step (worst case:
                         benign forward with graph + its backward)
  convergesmooth_closed  the same outside a constant-lr segment (benign forward without graph, for u_t only)
  weight_centralisation  fgsm + weight centralisation (one history snapshot present)

Examples:
    python scripts/bench_regularisers.py --threads 1 --out results/regularisers_bench.md
    python /work/shared/data/get_cifar10.py data/cifar10
    python scripts/bench_regularisers.py --data-root data/cifar10
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from robustrain.attacks import build_attack
from robustrain.experiment import git_commit
from robustrain.models import create_model
from robustrain.regularisers import build_regulariser
from robustrain.threat import make_threat
from robustrain.training import LRSchedule, Trainer

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
EPS = 8 / 255
NOTES = """Pass accounting (F = one forward of the batch, a weight-gradient backward ≈ 2F, an input-only backward ≈ 1F
because the attack freezes the parameters): a plain FGSM step here is attack F + 1F and training F + 2F = 5F.

- ELLE / ELLE-A add one forward and backward of the 3B triplet batch: 5F + 9F = 14F, **2.8×** — what is measured.
  The issue's 2.5× is the same count against an FGSM step whose attack backward also computes weight gradients
  (6F, as in the official codes' `loss.backward()`): 15F / 6F = 2.5×. ELLE-A costs the same as ELLE (E_lin is
  computed every step, also at λ ≈ 0).
- ConvergeSmooth adds a benign forward: without graph while the gate cannot fire (outside a constant-lr segment)
  6F / 5F = **1.2×**; with the graph and its backward when the gate is open, 8F / 5F = **1.6×** (on the MNIST
  run the gate was open in about half of the in-segment steps). ≤ 1.15× needs the benign loss for free: the
  official code's `--initialize` variant takes the loss at the attack's start point from the attack's own
  forward, which here carries no graph to the weights (attacks freeze the parameters), so it is not offered.
- AAER reuses the attack's start-point logits and loss: no extra pass (≈ 1.0×). Weight centralisation is a
  parameter-sized vector operation (≈ 1.0×). GradAlign: one forward with a double-backprop backward, ≈ 2.6×.
"""
TARGETS = {"aaer": 1.05, "convergesmooth": 1.15, "convergesmooth_closed": 1.15, "elle": 2.5, "elle_a": 2.5}


def step_benchmark_parser(doc: str, *, warmup: int) -> argparse.ArgumentParser:
    """The options every per-step cost benchmark shares (model size, repeats, threads, data, seed, output)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16, help="PreActResNet-18 width (64 in the papers)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=9, help="timed steps per contender")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps per contender before timing")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder with cifar-10-batches-bin/ for a real batch (default: uniform random images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="markdown report (a .json with the raw times beside it)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = step_benchmark_parser(__doc__, warmup=2)
    p.add_argument("--only", nargs="*", help="contenders to run (fgsm is always run)")
    return p.parse_args(argv)


def load_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(args.seed)
    if args.data_root is None:
        return torch.rand(args.batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (args.batch,), generator=gen)
    from robustrain.data.cifar import read_cifar10

    ds = read_cifar10(args.data_root, train=True)
    idx = torch.randperm(ds.images.shape[0], generator=gen)[: args.batch]
    return ds.images[idx].float().div_(255), ds.labels[idx].clone()


def contenders(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor,
               y: torch.Tensor) -> dict[str, Callable[[], Any]]:
    threat = make_threat("linf", EPS)
    specs: dict[str, tuple[dict, list[tuple[str, dict]]]] = {
        "fgsm": ({"name": "fgsm"}, []),
        "fgsm_rs": ({"name": "fgsm_rs"}, []),
        "elle": ({"name": "fgsm"}, [("elle", {})]),
        "elle_a": ({"name": "fgsm"}, [("elle_a", {})]),
        "gradalign": ({"name": "fgsm", "step": 1.25 * EPS}, [("gradalign", {})]),
        "aaer": ({"name": "fgsm_rs"}, [("aaer", {"variant": "rs"})]),
        "convergesmooth": ({"name": "fgsm_rs", "step": EPS, "project": False}, [("convergesmooth", {})]),
        "convergesmooth_closed": ({"name": "fgsm_rs", "step": EPS, "project": False}, [("convergesmooth", {})]),
        "weight_centralisation": ({"name": "fgsm"}, [("weight_centralisation", {})]),
    }
    keep = set(args.only or specs) | {"fgsm"}
    out: dict[str, Callable[[], Any]] = {}
    for name, (attack_spec, terms_spec) in specs.items():
        if name not in keep:
            continue
        m = copy.deepcopy(model)
        attack = build_attack(attack_spec["name"], threat, bn_mode="train",
                              **{k: v for k, v in attack_spec.items() if k != "name"})
        terms = [build_regulariser(t, threat, **o) for t, o in terms_spec]
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        sched = LRSchedule("constant", 0.01, 10_000, 100)
        trainer = Trainer(m, attack, opt, sched, [None] * 100, epochs=1, loss_terms=terms, seed=args.seed)
        for t in terms:
            if t.name == "convergesmooth" and name == "convergesmooth":
                trainer.epoch = 5  # inside the (single) constant-lr segment, past the stride
                t.means = [100.0, 100.0]  # far above the benign loss: the gate is open and the sign negative
            if t.name == "weight_centralisation":
                t.snapshot(t.parameters(m))
        out[name] = (lambda tr=trainer: tr.train_step(x, y))
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = load_batch(args)
    torch.manual_seed(args.seed)
    model = create_model("preact_resnet18", num_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         width=args.width)
    runs = contenders(args, model, x, y)
    names = list(runs)
    for _ in range(args.warmup):
        for n in names:
            runs[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    load_start = os.getloadavg()
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            runs[n]()
            times[n].append(time.perf_counter() - t0)
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names), flush=True)
    load_end = os.getloadavg()
    base = times["fgsm"]
    rows = []
    for n in names:
        ratios = [t / b for t, b in zip(times[n], base)]
        rows.append({"contender": n, "median_s": statistics.median(times[n]), "min_s": min(times[n]),
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "ratio_of_fastest": min(times[n]) / min(base), "target": TARGETS.get(n)})
    cmd = "python scripts/bench_regularisers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Per-step cost of the regularisers relative to a plain FGSM step", "",
        f"- command: `{cmd.strip()}`; commit: {git_commit()}",
        f"- model: PreActResNet-18 width {args.width}, batch {args.batch}, "
        f"{'CIFAR-10 training images' if args.data_root else 'uniform random 3x32x32 images'}, L∞ ε = 8/255, "
        f"fp32, SGD; one `Trainer.train_step` per call (attack + objective + terms + backward + step)",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s); load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end "
        "(a shared machine: other processes ran during the measurement)",
        f"- {args.warmup} untimed warm-up steps, then {args.repeats} interleaved repeats (rotating order); "
        "ratio = contender / plain FGSM of the same repeat", "",
        "| contender | median s/step | ratio (median of paired) | ratio range | ratio of fastest | target |",
        "|---|---|---|---|---|---|",
    ]
    lines += ratio_rows(rows)
    write_report(args, lines + ["", NOTES], times, rows)


def ratio_rows(rows: list[dict], base_column: bool = False) -> list[str]:
    """Markdown rows of the paired-ratio table (the contender's base in a column when ``base_column``)."""
    out = []
    for r in rows:
        target = f"≤ {r['target']:.2f}× " + ("✓" if r["ratio_median"] <= r["target"] else "✗") if r["target"] else ""
        base = f" {r['base']} |" if base_column else ""
        out.append(f"| {r['contender']} |{base} {r['median_s']:.3f} | {r['ratio_median']:.2f}× | "
                   f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f} | {r['ratio_of_fastest']:.2f}× | {target} |")
    return out


def write_report(args: argparse.Namespace, lines: list[str], times: Any, rows: list[dict]) -> None:
    """Print the markdown report; with ``--out`` also write it and the raw times (``.json`` beside it)."""
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "times": times, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
