#!/usr/bin/env python
"""Benchmark (not a timed test): ``robustrain eval --backend fast`` against the official AutoAttack package
(PyPI ``pyautoattack``), standard version, with every example's robust flag compared.

Per model both contenders evaluate the same test images in one process, one after the other (the order alternates
from model to model so load from other processes hits both alike), with the same seed and batch size:

* official: ``pyautoattack.AutoAttack(model, norm='Linf', eps=ε, version='standard', seed=S)
  .run_standard_evaluation(x, y, batch_size=B)``; an example is robust when the returned label equals ``y``;
* fast: robustrain's whole evaluation (``evaluate_robustness`` with ``backend='fast'``: the cascade, the
  per-batch threat-model check, the sanity checks, the per-batch state file in a temporary folder); an example is
  robust when its final flag is.

Standard settings throughout: APGD-CE 100 iterations, APGD-T 9 targets x 100, FAB-T 9 targets x 100, Square 5,000
queries. The per-stage seconds of the official run come from timing its components' ``perturb`` calls.

The models are trained here (a few minutes in all on a CPU): small CNNs on MNIST and CIFAR-10 with FGSM-RS or PGD,
each evaluated at its training radius, so the cascade's later stages have robust points to work on.

Example (one thread, the load noted in the output):
    OMP_NUM_THREADS=1 python scripts/bench_autoattack_fast.py --mnist-root /work/shared/data/mnist \\
        --cifar-root data/cifar10 --n-ex 200 --batch-size 100 \\
        --json results/benchmarks/autoattack_fast.json --md results/benchmarks/autoattack_fast.md
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from robustrain.benchmarking import publish, stamp
from robustrain.data import BatchLoader, first_examples, load_dataset
from robustrain.evaluation import EvalPlan, evaluate_robustness
from robustrain.evaluation.backends import import_official
from robustrain.models import create_model
from robustrain.threat import make_threat
from robustrain.training import FGSMTrainer, LRSchedule, PGDTrainer

MODELS = {
    "mnist_cnn_bn_pgd": {"data": "mnist", "arch": {"width": 16, "hidden": 100, "input_size": 28, "in_channels": 1,
                                                  "batchnorm": True},
                         "train": "pgd", "eps": 0.2, "subset": 30000, "epochs": 2, "lr": 0.05},
    "mnist_cnn_fgsm": {"data": "mnist", "arch": {"width": 16, "hidden": 100, "input_size": 28, "in_channels": 1},
                       "train": "fgsm_rs", "eps": 0.1, "subset": 60000, "epochs": 3, "lr": 0.05},
    "cifar_cnn_fgsm": {"data": "cifar10", "arch": {"width": 16, "hidden": 100, "input_size": 32, "in_channels": 3},
                       "train": "fgsm_rs", "eps": 2 / 255, "subset": 50000, "epochs": 8, "lr": 0.02},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist-root", type=Path, required=True)
    p.add_argument("--cifar-root", type=Path, required=True, help="folder holding cifar-10-batches-bin/")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--n-ex", type=int, default=200, help="test images per model (the first ones)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-cache", type=Path, help="folder to keep the trained models in (retrain if absent)")
    p.add_argument("--profile-fab", metavar="MODEL", help="instead of the benchmark: torch.profiler table of the fast "
                   "FAB-T (1 target, 20 iterations) on the first 60 test images MODEL classifies correctly")
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path)
    return p.parse_args(argv)


def profile_fab(args) -> int:
    """Where FAB-T's time goes (the exact projection's argsort against the model's convolutions)."""
    from torch.profiler import ProfilerActivity, profile

    from robustrain.evaluation.fast_autoattack import fab_targeted

    spec = MODELS[args.profile_fab]
    model, _, _ = train_model(args.profile_fab, spec, args)
    test_ds = load_dataset(spec["data"], roots(args)[spec["data"]], "test")
    x, y = first_examples(BatchLoader(test_ds, 100, shuffle=False), 100)
    with torch.no_grad():
        ok = model(x).max(1)[1] == y
    x, y = x[ok][:60], y[ok][:60]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fab_targeted(model, x, y, norm="linf", eps=spec["eps"], steps=20, target_classes=1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


def roots(args) -> dict:
    return {"mnist": args.mnist_root, "cifar10": args.cifar_root}


def train_model(name: str, spec: dict, args) -> tuple[torch.nn.Module, float, object]:
    train_ds = load_dataset(spec["data"], roots(args)[spec["data"]], "train")
    a = dict(spec["arch"])
    torch.manual_seed(args.seed)
    model = create_model("small_cnn", num_classes=10, in_channels=a.pop("in_channels"), mean=train_ds.mean,
                         std=train_ds.std, **a)
    cache = args.model_cache / f"{name}.pt" if args.model_cache else None
    if cache is not None and cache.exists():
        model.load_state_dict(torch.load(cache))
        return model.eval(), 0.0, train_ds
    loader = BatchLoader(train_ds.subset(torch.arange(spec["subset"])), 128, shuffle=True, seed=args.seed,
                         augment="crop_flip" if spec["data"] == "cifar10" else None)
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=0.9, weight_decay=5e-4)
    sched = LRSchedule("cyclic", spec["lr"], spec["epochs"] * len(loader), len(loader), peak=0.4)
    threat = make_threat("linf", spec["eps"])
    t0 = time.perf_counter()
    if spec["train"] == "pgd":
        PGDTrainer(model, threat, opt, sched, loader, steps=5, epochs=spec["epochs"], seed=args.seed).fit()
    else:
        FGSMTrainer(model, threat, opt, sched, loader, epochs=spec["epochs"], seed=args.seed).fit()
    seconds = time.perf_counter() - t0
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    return model.eval(), seconds, train_ds


def run_official(model, x, y, eps: float, args) -> dict:
    aa_mod = import_official()
    aa = aa_mod.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=args.seed, device="cpu")
    stage_seconds: dict[str, float] = {}

    def timed(label, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                stage_seconds[label] = stage_seconds.get(label, 0.0) + time.perf_counter() - t0
        return wrapper

    aa.apgd.perturb = timed("apgd-ce", aa.apgd.perturb)
    aa.apgd_targeted.perturb = timed("apgd-t", aa.apgd_targeted.perturb)
    aa.fab.perturb = timed("fab-t", aa.fab.perturb)
    aa.square.perturb = timed("square", aa.square.perturb)
    t0 = time.perf_counter()
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=args.batch_size)
    wall = time.perf_counter() - t0
    flags = (y_adv == y).cpu()
    return {"seconds": wall, "robust_acc": flags.float().mean().item(), "per_stage_seconds": stage_seconds,
            "flags": flags, "version": aa_mod.__name__ + " " + getattr(aa_mod, "__version__", "?")}


def run_fast(model, x, y, eps: float, args) -> dict:
    plan = EvalPlan(make_threat("linf", eps), attacks=["clean", "autoattack"], batch_size=args.batch_size,
                    seed=args.seed, backend="fast")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report, result = evaluate_robustness(model, x, y, plan, num_classes=10, out_dir=Path(tmp))
        wall = time.perf_counter() - t0
    return {"seconds": wall, "robust_acc": report["accuracy"]["autoattack"], "clean_acc": report["accuracy"]["clean"],
            "per_stage_seconds": report["runtime"]["per_stage"],
            "per_stage_acc": {s["name"]: s["robust_acc"] for s in report["stages"]}, "flags": result.final.cpu()}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile_fab:
        return profile_fab(args)
    load_before = os.getloadavg()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; expected names from {list(MODELS)}")
    out_models = {}
    for i, name in enumerate(names):
        spec = MODELS[name]
        model, train_seconds, _ = train_model(name, spec, args)
        test_ds = load_dataset(spec["data"], roots(args)[spec["data"]], "test")
        x, y = first_examples(BatchLoader(test_ds, args.batch_size, shuffle=False), args.n_ex)
        print(f"{name}: trained in {train_seconds:.0f} s; evaluating {len(y)} images at eps {spec['eps']:.4g}",
              file=sys.stderr, flush=True)
        order = ["fast", "official"] if i % 2 == 0 else ["official", "fast"]
        res = {}
        for who in order:
            res[who] = (run_fast if who == "fast" else run_official)(model, x, y, spec["eps"], args)
            print(f"  {who}: {res[who]['seconds']:.1f} s, robust acc {100 * res[who]['robust_acc']:.2f}%",
                  file=sys.stderr, flush=True)
        differ = (res["fast"]["flags"] != res["official"]["flags"]).nonzero().flatten().tolist()
        for r in res.values():
            r["flags"] = "".join("1" if f else "0" for f in r["flags"].tolist())
        out_models[name] = {
            "spec": {k: v for k, v in spec.items()}, "train_seconds": train_seconds, "n_ex": len(y), "order": order,
            "params": sum(p.numel() for p in model.parameters()), "fast": res["fast"], "official": res["official"],
            "ratio_official_over_fast": res["official"]["seconds"] / res["fast"]["seconds"],
            "n_flags_differ": len(differ), "differ_at": differ,
        }
        print(f"  ratio official/fast {out_models[name]['ratio_official_over_fast']:.2f}, flags differ at "
              f"{len(differ)} examples", file=sys.stderr, flush=True)
    out = {
        "what": "standard AutoAttack (Linf): robustrain eval --backend fast vs pyautoattack run_standard_evaluation",
        "batch_size": args.batch_size, "threads": args.threads, "seed": args.seed, "models": out_models,
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()}-core CPU shared with other jobs",
        **stamp(),
    }
    publish(out, render_md, args.json, args.md)
    return 0


def render_md(o: dict) -> str:
    lines = [
        "# AutoAttack: robustrain's fast backend vs the official package (CPU)",
        "",
        f"{o['what']}; standard settings (APGD-CE 100 it., APGD-T 9x100, FAB-T 9x100, Square 5,000 queries), seed "
        f"{o['seed']}, batch size {o['batch_size']}, {o['threads']} thread(s), on a {o['machine']}; load average "
        f"{o['load_avg_before'][0]:.2f} before, {o['load_avg_after'][0]:.2f} after. Both contenders per model in one "
        "process, back to back (order alternating from model to model).",
        "",
        "| model | ε | n | clean (%) | robust (%) official / fast | flags differ | official (s) | fast (s) | "
        "official / fast |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in o["models"].items():
        f, off = m["fast"], m["official"]
        lines.append(f"| {name} ({m['params']:,} params, {m['spec']['train']}) | {m['spec']['eps'] * 255:.3g}/255 | "
                     f"{m['n_ex']} | {100 * f['clean_acc']:.2f} | {100 * off['robust_acc']:.2f} / "
                     f"{100 * f['robust_acc']:.2f} | {m['n_flags_differ']} | {off['seconds']:.1f} | {f['seconds']:.1f} | "
                     f"{m['ratio_official_over_fast']:.2f} |")
    lines += ["", "Per stage, seconds official / fast (robust accuracy after the stage, fast run):", ""]
    for name, m in o["models"].items():
        f, off = m["fast"], m["official"]
        parts = [f"{s} {off['per_stage_seconds'].get(s, 0.0):.1f} / {f['per_stage_seconds'].get(s, 0.0):.1f} "
                 f"({100 * f['per_stage_acc'][s]:.2f}%)" for s in ("apgd-ce", "apgd-t", "fab-t", "square")]
        lines.append(f"- {name}: " + "; ".join(parts))
    lines += ["", f"Command: `{' '.join(o['argv'])}`; commit {o['git_commit']}; torch {o['torch']}; {o['date']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
