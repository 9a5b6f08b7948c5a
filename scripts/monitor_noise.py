#!/usr/bin/env python3
"""Per-example validation flags: recorded on a live run, fitted, and simulated (issue 15, the paired RO rule).

The monitor measures the SAME validation images after every epoch, so two epochs' accuracies differ only by the
images whose robust flag flipped between the two models. This module holds what the replay of
``scripts/monitor_eval.py replay --noise latent`` needs to model that:

    # 1. record every epoch's per-example robust flags of a small CIFAR-10 PGD-AT run with an lr decay (~5 min CPU)
    python scripts/monitor_noise.py record --cifar data/cifar10 --out results/studies/data/flags_cifar10_small.csv

    # 2. the fitted latent model (printed; the replay fits it from the same file)
    python scripts/monitor_noise.py fit results/studies/data/flags_cifar10_small.csv

The latent model of the flags (fixed, slowly drifting and flickering parts of each image's robustness) and its fit
are in :mod:`robustrain.training.monitor_replay`.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robustrain import provenance  # noqa: E402
from robustrain.training.monitor_replay import (RICE_CURVE, first_declaration, fit_latent, load_curve,  # noqa: E402
                                                load_flags, pct, quantiles, simulate_flags)

FLAGS = ROOT / "results" / "studies" / "data" / "flags_cifar10_small.csv"
# the recorded run: configs/cifar10_ro_small.yaml (small CNN, PGD-3 AT) with more data, augmentation, weight decay
# and one lr decay, so that the flags are seen at a high lr, across the decay and on the low-lr stretch after it
RECORD_OVERRIDES = ["data.train_subset=4000", "data.val_size=1000", "data.augment=crop_flip", "optim.weight_decay=5e-4",
                    "schedule={name: multistep, milestones: [20], gamma: 0.1}", "train.epochs=40",
                    "train.progress=false", "wandb.mode=disabled", "monitor.enabled=false"]


# -- record -------------------------------------------------------------------------------------------------
def cmd_record(args: argparse.Namespace) -> None:
    from robustrain.build import build_trainer
    from robustrain.config import load_config
    from robustrain.training import Callback

    overrides = [f"data.root={args.cifar}", *RECORD_OVERRIDES, *args.set]
    cfg = load_config(ROOT / "configs" / "cifar10_ro_small.yaml", overrides)
    trainer, _ = build_trainer(cfg, args.run_dir)
    rows: list[tuple[int, float, float, str]] = []

    class Record(Callback):
        def on_validation_end(self, tr, metrics):
            flags = tr.val_result.correct["robust"].to(torch.uint8).tolist()
            rows.append((int(metrics["epoch"]), float(metrics["lr"]), sum(flags) / len(flags),
                         "".join(map(str, flags))))
            print(f"epoch {metrics['epoch']}: lr {metrics['lr']:.4g}, val robust {rows[-1][2]:.3f}", flush=True)

    trainer.callbacks.append(Record())
    t0 = time.perf_counter()
    trainer.fit()
    from robustrain import provenance

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        f.write(f"# per-example robust flags (1 = robust to the validation PGD-10) of the {len(rows[0][3])} validation "
                "images after every epoch, same images in the same order\n")
        f.write(f"# command: python scripts/monitor_noise.py record --cifar {args.cifar} --out "
                f"{args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
                f"{''.join(f' --set {s!r}' for s in args.set)} ({time.perf_counter() - t0:.0f} s)\n")
        f.write(f"# commit: {provenance.git_commit(short=True, cwd=ROOT)}; config: configs/cifar10_ro_small.yaml with "
                f"{' '.join(overrides[1:])}\n")
        f.write("epoch,lr,val_robust_acc,flags\n")
        for e, lr, acc, bits in rows:
            f.write(f"{e},{lr:.6g},{acc:.4f},{bits}\n")
    print(f"wrote {args.out}")


def cmd_fit(args: argparse.Namespace) -> None:
    epochs, lrs, flags = load_flags(args.flags)
    from robustrain.training.monitor_rules._stats import first_decay

    decay = first_decay(lrs)
    parts = {"before the decay": flags[2:decay], "after the decay": flags[decay:]}  # epochs 1-2: ε warm-up
    for name, part in parts.items():
        fit = fit_latent(part, args.max_lag)
        print(f"{name} (epochs {len(part)}, n {fit['n']}, mean acc {fit['p']:.3f}): h {fit['h']:.3f}, "
              f"s {fit['s']:.3f}, psi {fit['psi']:.3f}; flip rate by lag measured {[round(m, 4) for m in fit['measured']]}, "
              f"fitted {[round(m, 4) for m in fit['fitted']]}; independent draws would flip {fit['independent']:.3f}")


# -- replay -------------------------------------------------------------------------------------------------
def replay_rules(epochs: int) -> dict[str, Any]:
    """The rules compared (the first is the monitor's default RO rule for a run of ``epochs``)."""
    from robustrain.training.monitor_rules import build_rule

    window = max(2, min(10, epochs // 20))  # as build_monitor
    return {
        f"robust_overfitting (default, window {window})": build_rule({"name": "robust_overfitting", "window": window}),
        "robust_overfitting, window 5": build_rule({"name": "robust_overfitting", "window": 5}),
        "robust_overfitting_paired, window 5": build_rule({"name": "robust_overfitting_paired", "window": 5}),
        "robust_overfitting_paired, window 3": build_rule({"name": "robust_overfitting_paired", "window": 3}),
        "robust_overfitting_paired, window 3, watched from epoch 1":
            build_rule({"name": "robust_overfitting_paired", "window": 3, "after_decay": False}),
    }


def cmd_replay(args: argparse.Namespace) -> None:
    from robustrain.training.monitor_rules import History
    from robustrain.training.monitor_rules._stats import first_decay

    t0 = time.perf_counter()
    curve, source = load_curve(RICE_CURVE)
    epochs, lrs = len(curve["epoch"]), curve["lr"]
    decay = first_decay(lrs)
    truth, recorded = curve["test_robust_acc"], curve["val_robust_acc"]
    peak = max(range(epochs), key=lambda i: (recorded[i], -i)) + 1
    target = peak + args.within
    flat_level = sum(truth[decay: decay + 10]) / 10
    flat = truth[:decay] + [flat_level] * (epochs - decay)
    rec_epochs, rec_lrs, rec_flags = load_flags(args.flags)
    rec_decay = first_decay(rec_lrs)
    fits = {"before": fit_latent(rec_flags[args.skip: rec_decay], args.max_lag),
            "after": fit_latent(rec_flags[rec_decay:], args.max_lag)}
    regime = ["before" if e < decay else "after" for e in range(epochs)]  # index e = epoch e + 1
    h, s, psi = ([fits[g][k] for g in regime] for k in ("h", "s", "psi"))
    if args.flip_scale != 1.0:  # sensitivity: every varying part of the latent (1 - h) scaled, the slow drift too
        h = [1 - min(1.0, args.flip_scale * (1 - v)) for v in h]
        s = [min(v * args.flip_scale, 1 - hv) for v, hv in zip(s, h)]
    rules = replay_rules(epochs)
    gen = torch.Generator().manual_seed(args.seed)
    results = []
    for n in args.n:
        first: dict[tuple[str, str], list[int | None]] = {}
        at_target: dict[str, list[tuple[float, float]]] = {}
        flips = []
        for scenario, p in (("real", truth), ("flat", flat)):
            for start in range(0, args.runs, args.chunk):
                flags = simulate_flags(p, n, min(args.chunk, args.runs - start), h, s, psi, gen)
                acc = flags.float().mean(-1)
                if scenario == "real":
                    flips.append((flags[:, decay + 1:] != flags[:, decay:-1]).float().mean().item())
                for r in range(flags.shape[0]):
                    hist = History(val_robust=acc[r].tolist(), lr=lrs, n_val=n, epochs=epochs,
                                   val_flags=list(flags[r].unbind(0)))
                    for label, rule in rules.items():
                        first.setdefault((scenario, label), []).append(first_declaration(rule, hist))
                        if scenario == "real" and hasattr(rule, "statistic"):  # drop and threshold at the target
                            row = next((x for x in rule.statistic(hist) if x["epoch"] == target), None)
                            if row is not None:
                                at_target.setdefault(label, []).append((row["drop"], row["threshold"]))
        for label in rules:
            real, fl = first[("real", label)], first[("flat", label)]
            after = [f for f in real if f is not None and f > decay]
            q = quantiles(after, (0.25, 0.5, 0.75)) if after else [math.nan] * 3
            results.append({"n": n, "rule": label, "before": sum(f is not None and f <= decay for f in real) / args.runs,
                            "flat": sum(f is not None and f > decay for f in fl) / args.runs,
                            "detected": len(after) / args.runs, "q": q,
                            "within": sum(f <= target for f in after) / args.runs,
                            "target_drop": statistics.median(d for d, _ in at_target.get(label, [(math.nan, 0)])),
                            "target_threshold": statistics.median(t for _, t in at_target.get(label, [(0, math.nan)])),
                            "flip_after": sum(flips) / len(flips)})
        print(f"n = {n}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    write_replay(args, results, fits, source, decay, peak, target, flat_level, epochs, time.perf_counter() - t0)


def write_replay(args, results, fits, source, decay, peak, target, flat_level, epochs, seconds) -> None:
    out = args.out.resolve()
    out = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    flags = args.flags.resolve()
    flags = flags.relative_to(ROOT) if flags.is_relative_to(ROOT) else flags
    command = (f"python scripts/monitor_noise.py replay --runs {args.runs} --n {' '.join(map(str, args.n))} "
               f"--flags {flags} --flip-scale {args.flip_scale:g} --seed {args.seed} --out {out}")
    fb, fa = fits["before"], fits["after"]
    lines = [
        "# Robust-overfitting rules replayed on Rice et al.'s CIFAR-10 curve with per-image flags that persist",
        "",
        f"commit: {provenance.git_commit(short=True, cwd=ROOT)} · command: `{command}` ({seconds:.0f} s on a shared 2-core CPU) · curve: "
        f"{source} · flip model fitted to `{flags}`",
        "",
        f"Noise model: each of n validation images carries a robust flag per epoch, from a latent score "
        f"√h·c_i + √s·r_i(t) + √(1−h−s)·e_i(t) (c_i fixed per image, r_i an AR(1) in epochs with coefficient ψ, e_i "
        f"fresh each epoch) below the threshold that makes the expected accuracy Rice's test curve (the 10,000-image "
        f"`test_robust_acc`, treated as the truth). h, s, ψ are fitted to the flip rates at lags 1–"
        f"{len(fa['measured'])} of a real run's per-example flags ({fa['n']} validation images): before its lr decay "
        f"h = {fb['h']:.3f}, s = {fb['s']:.3f}, ψ = {fb['psi']:.3f} (lag-1 flip rate {100 * fb['measured'][0]:.1f} % at "
        f"accuracy {fb['p']:.2f}), after it h = {fa['h']:.3f}, s = {fa['s']:.3f}, ψ = {fa['psi']:.3f} (at accuracy "
        f"{fa['p']:.2f}; independent draws would flip {100 * fa['independent']:.0f} %). Flip rates by lag after the "
        f"decay, measured: {', '.join(f'{100 * m:.1f}' for m in fa['measured'])} %; the model's: "
        f"{', '.join(f'{100 * m:.1f}' for m in fa['fitted'])} %."
        + (f" Sensitivity run: every varying part of the latent (1 − h, and s with it) scaled by {args.flip_scale:g}."
           if args.flip_scale != 1 else ""),
        "",
        f"Counted as in monitor_cifar10_replay.md: declarations up to the first lr decay (epoch {decay}; all false "
        f"alarms), declarations after it on the flat control (the curve held at {flat_level:.3f} after the decay), and "
        f"the first declaration after the decay on the real curve (the recorded validation curve peaks at epoch "
        f"{peak}; target: by epoch {target}). {args.runs} simulated runs per n.",
        "",
        "| n | rule | false alarms before the decay | false alarms after it, flat control | detected after the decay | "
        f"detection epoch, median [25 %, 75 %] | detected by epoch {target} | at epoch {target}: drop / threshold "
        "(median, points) | n the threshold would need at epoch " + f"{target} | lag-1 flip rate after the decay |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        q = r["q"]
        det = "—" if q[1] != q[1] else f"{q[1]:.0f} [{q[0]:.0f}, {q[2]:.0f}]"
        d, t = r["target_drop"], r["target_threshold"]
        need = (f"≈ {r['n'] * (t / d) ** 2:,.0f}" if d == d and t == t and d > 0 else "—")
        lines.append(f"| {r['n']} | {r['rule']} | {pct(r['before'])} | {pct(r['flat'])} | {pct(r['detected'])} | {det} | "
                     f"{pct(r['within'])} | {'—' if d != d else f'{100 * d:.2f} / {100 * t:.2f}'} | {need} | "
                     f"{100 * r['flip_after']:.1f} % |")
    lines += ["", "\"n the threshold would need\": the rule's threshold scales as 1/√n (the standard error of a mean "
              "over n images), so n × (threshold / drop)² is the validation size at which the median drop at the "
              "target epoch would just reach the median threshold (an extrapolation; the effect floor `margin` of 1 "
              "point is not scaled).", ""]
    path = args.out.with_suffix(".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="train the small CIFAR-10 run and write every epoch's per-example flags")
    r.add_argument("--cifar", required=True, help="the CIFAR-10 folder (binary version)")
    r.add_argument("--out", type=Path, default=FLAGS)
    r.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "monitor_flags")
    r.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    f = sub.add_parser("fit", help="fit the latent model to a recorded file and print it")
    f.add_argument("flags", type=Path, nargs="?", default=FLAGS)
    f.add_argument("--max-lag", type=int, default=18)
    rp = sub.add_parser("replay", help="replay the RO rules on Rice's curve with persistent per-image flags")
    rp.add_argument("--flags", type=Path, default=FLAGS, help="recorded per-example flags the flip model is fitted to")
    rp.add_argument("--n", type=int, nargs="+", default=[200, 256, 500, 1000])
    rp.add_argument("--runs", type=int, default=1000)
    rp.add_argument("--chunk", type=int, default=50, help="runs simulated at once (memory)")
    rp.add_argument("--flip-scale", type=float, default=1.0, help="sensitivity: scale the fitted 1 - h (and s)")
    rp.add_argument("--skip", type=int, default=2, help="first epochs of the recording left out of the fit (ε ramp)")
    rp.add_argument("--max-lag", type=int, default=18)
    rp.add_argument("--within", type=int, default=15)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--out", type=Path, default=ROOT / "results" / "studies" / "monitor_cifar10_replay_paired")
    args = p.parse_args(argv)
    {"record": cmd_record, "fit": cmd_fit, "replay": cmd_replay}[args.cmd](args)


if __name__ == "__main__":
    main()
