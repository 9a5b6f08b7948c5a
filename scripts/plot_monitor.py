#!/usr/bin/env python3
"""Plot the overfitting monitor's checks of one or more run folders and tabulate their events.

    python scripts/plot_monitor.py RUN_DIR [RUN_DIR ...] --out results/studies/monitor_mnist_rollback

writes OUT.png (clean / FGSM / PGD accuracy of the held-out check batch per step, events marked) and OUT.md
(per run: final validation and test accuracy, every event with its evidence). Everything is read from the
run folders' metrics.jsonl and summary.json (robustrain.reporting); nothing is typed by hand.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from robustrain.reporting import load_runs, plot_monitor_checks
from robustrain.tables import pct


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="path without extension")
    p.add_argument("--title", default="overfitting monitor: held-out check batch")
    args = p.parse_args()

    runs = load_runs(args.runs)
    command = f"python scripts/plot_monitor.py {' '.join(map(str, args.runs))} --out {args.out}"
    lines = [f"# {args.title}\n", f"Produced by `{command}`.\n"]
    for run in runs:
        lines.append(f"\n## {run.label}\n")
        for row in run.summary.get("test", []):
            lines.append(f"- test ({row['checkpoint']}.pt, epoch {row['epoch']}, n = {row['n_ex']}): " + ", ".join(
                f"{k} {pct(v)}%" for k, v in row.items() if k.endswith("_acc")))
        hist = run.summary.get("history", [])
        if hist:
            lines.append("- validation robust accuracy per epoch: "
                         + ", ".join(f"{h['val_robust_acc']:.3f}" for h in hist))
        if run.checks:
            check_s = sum(c.get("check_seconds", 0) for c in run.checks)
            lines.append(f"- checks: {len(run.checks)}, total check time {check_s:.1f} s"
                         f" of {run.summary.get('train_seconds', float('nan'))} s training")
        lines.append(f"- events: {len(run.events) or 'none'}")
        for e in run.events:
            lines.append(f"  - step {e['step']}: **{e['event']}** — {e.get('message', '')}")
    plot_monitor_checks(runs, args.out.with_suffix(".png"), args.title)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.png')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
