#!/usr/bin/env python3
"""Plot the overfitting monitor's checks of one or more run folders and tabulate their events.

    python scripts/plot_monitor.py RUN_DIR [RUN_DIR ...] --out results/monitor_mnist

writes OUT.png (clean / FGSM / PGD accuracy of the held-out check batch per step, events marked) and OUT.md
(per run: final validation and test accuracy, every event with its evidence). Everything is read from the
run folders' metrics.jsonl and summary.json; nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(run: Path) -> tuple[list[dict], list[dict], dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    checks = [r for r in records if r["kind"] == "event" and r["event"] == "monitor_check"]
    events = [r for r in records if r["kind"] == "event" and r["event"] != "monitor_check"]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    return checks, events, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="path without extension")
    p.add_argument("--title", default="overfitting monitor: held-out check batch")
    args = p.parse_args()

    fig, axes = plt.subplots(1, len(args.runs), figsize=(5.2 * len(args.runs), 4.2), sharey=True, squeeze=False)
    lines = [f"# {args.title}\n", f"Produced by `python scripts/plot_monitor.py {' '.join(map(str, args.runs))} --out {args.out}`.\n"]
    for ax, run in zip(axes[0], args.runs):
        checks, events, summary = read(run)
        steps = [c["step"] for c in checks]
        ax.plot(steps, [c["clean_acc"] for c in checks], label="clean", color="tab:blue")
        ax.plot(steps, [c["fgsm_acc"] for c in checks], label="FGSM", color="tab:orange")
        ax.plot(steps, [c["pgd_acc"] for c in checks], label="PGD", color="tab:red", linewidth=2)
        if checks and "eps" in checks[0]:
            ax2 = ax.twinx()
            ax2.plot(steps, [c["eps"] for c in checks], color="gray", linestyle=":", label="ε of the check")
            ax2.set_ylim(0, max(c["eps"] for c in checks) * 1.05 or 1)
            ax2.set_ylabel("ε (dotted)", color="gray")
        for e in events:
            color = {"catastrophic_overfitting": "red", "rollback": "green", "robust_overfitting": "purple"}.get(e["event"], "black")
            ax.axvline(e["step"], color=color, linestyle="--", alpha=0.8)
            ax.text(e["step"], 1.02, e["event"].replace("_", " "), rotation=90, fontsize=7, color=color, va="bottom")
        ax.set_title(run.name, fontsize=10, pad=60 if events else 6)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
        lines.append(f"\n## {run.name}\n")
        for row in summary.get("test", []):
            lines.append(f"- test ({row['checkpoint']}.pt, epoch {row['epoch']}, n = {row['n_ex']}): " + ", ".join(
                f"{k} {v}" for k, v in row.items() if k.endswith("_acc")))
        hist = summary.get("history", [])
        if hist:
            lines.append("- validation robust accuracy per epoch: " + ", ".join(f"{h['val_robust_acc']:.3f}" for h in hist))
        if checks:
            lines.append(f"- checks: {len(checks)}, total check time {sum(c.get('check_seconds', 0) for c in checks):.1f} s"
                         f" of {summary.get('train_seconds', float('nan'))} s training")
        lines.append(f"- events: {len(events) or 'none'}")
        for e in events:
            lines.append(f"  - step {e['step']}: **{e['event']}** — {e.get('message', '')}")
    axes[0][0].set_ylabel("accuracy on 256 held-out images")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.png')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
