"""Table and plot of clean and PGD accuracy per epoch for a set of run folders (issue 3's CO study).

    python scripts/plot_runs.py runs/co_mnist --methods fgsm elle ... --out results/co_mnist \
        --title "..." --command "scripts/reproduce_co.sh"

Reads, per run folder ROOT/METHOD: metrics.jsonl (per-epoch val_clean_acc / val_robust_acc; per-step
train_adv_acc, the accuracy on the training attack's points), config.yaml, summary.json (test accuracy of the
best and last checkpoints) and eval_fgsm_last.json if present (test FGSM accuracy of the last checkpoint).
Writes OUT.md (command, seed, settings, tables) and OUT.png (clean, PGD and training-attack accuracy per epoch).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml


def load_run(folder: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    train_acc: dict[int, list[float]] = {}
    for r in records:
        if r.get("kind") == "step" and isinstance(r.get("train_adv_acc"), (int, float)):
            train_acc.setdefault(int(r["epoch"]), []).append(float(r["train_adv_acc"]))
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
    fgsm = folder / "eval_fgsm_last.json"
    return {
        "epochs": [int(r["epoch"]) for r in epochs],
        "clean": [float(r["val_clean_acc"]) for r in epochs],
        "pgd": [float(r["val_robust_acc"]) for r in epochs],
        "train_attack": [sum(v) / len(v) for _, v in sorted(train_acc.items())],
        "config": cfg,
        "summary": summary,
        "fgsm_last": json.loads(fgsm.read_text()) if fgsm.exists() else None,
    }


def describe(cfg: dict) -> str:
    a = cfg["attack"]
    attack = a["name"] + "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}"
                                 for k, v in a.items() if k not in ("name", "bn_mode"))
    regs = "; ".join(r["name"] + "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in r.items() if k != "name") + ")"
                     for r in cfg.get("regularisers") or [])
    return f"{attack}" + (f" + {regs}" if regs else "")


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def test_row(run: dict, which: str) -> dict | None:
    return next((r for r in run["summary"].get("test", []) if r["checkpoint"] == which), None)


def markdown(runs: dict[str, dict], title: str, command: str) -> str:
    first = next(iter(runs.values()))["config"]
    val = first["validation"]["attack"]
    ev = first["eval"]["attack"]
    lines = [
        f"# {title}", "",
        f"- command: `{command}`",
        f"- seed: {first['seed']} (every run); commit: <filled by lead>",
        f"- data: {first['data']['name']}, {first['data']['val_size']} held-out training images for validation; "
        f"model {first['model']['name']} {first['model'].get('kwargs') or ''}; threat {first['threat']['norm']} "
        f"ε = {first['threat']['eps']:.4g}",
        f"- training: {first['optim']['name']} lr {first['optim']['lr']:g} ({first['schedule']['name']}), batch "
        f"{first['data']['batch_size']}, {first['train']['epochs']} epochs, ε warm-up over "
        f"{first['train'].get('eps_warmup_epochs', 0):g} epochs",
        f"- val PGD: {val.get('steps')} steps, step {val.get('step')}, {val.get('restarts', 1)} restart(s), full ε, "
        f"model in eval mode; test: PGD-{ev.get('steps')}-{ev.get('restarts')} (step {ev.get('step')}) on "
        f"{first['eval'].get('n_ex') or 'all'} test images; FGSM = zero-init FGSM with step ε on the same images",
        "- 'train attack acc' = accuracy on the training attack's own points (e.g. FGSM), mean over the epoch's logged "
        "steps; during the ε warm-up it is measured at the reduced radius", "",
        "## Final accuracy (%)", "",
        "| method | training composition | val clean (last ep) | val PGD (last ep) | best val PGD (epoch) | "
        "test clean (last) | test PGD-50-10 (last) | test FGSM (last) | test PGD-50-10 (best) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        last, best = test_row(run, "last"), test_row(run, "best")
        pgd_key = next((k for k in (last or {}) if k.startswith("pgd") and k.endswith("_acc")), None)
        fgsm = run["fgsm_last"]
        best_ep = max(range(len(run["pgd"])), key=lambda i: run["pgd"][i]) if run["pgd"] else None
        lines.append(
            f"| {name} | {describe(run['config'])} | {pct(run['clean'][-1] if run['clean'] else None)} | "
            f"{pct(run['pgd'][-1] if run['pgd'] else None)} | "
            + (f"{pct(run['pgd'][best_ep])} ({run['epochs'][best_ep]})" if best_ep is not None else "–") + " | "
            + (f"{last['clean_acc']:.1f} | {last[pgd_key]:.1f}" if last and pgd_key else "– | –") + " | "
            + (f"{fgsm['fgsm_acc']:.1f}" if fgsm else "–") + " | "
            + (f"{best[pgd_key]:.1f}" if best and pgd_key else "–") + " | "
            + f"{run['summary'].get('train_seconds', '–')} |"
        )
    lines += ["", "## Per epoch: val clean / val PGD / train attack acc (%)", ""]
    n = max(len(r["epochs"]) for r in runs.values())
    lines.append("| method | " + " | ".join(f"ep {e + 1}" for e in range(n)) + " |")
    lines.append("|---|" + "---|" * n)
    for name, run in runs.items():
        cells = []
        for i in range(n):
            if i < len(run["epochs"]):
                t = run["train_attack"][i] if i < len(run["train_attack"]) else None
                cells.append(f"{pct(run['clean'][i])} / {pct(run['pgd'][i])} / {pct(t)}")
            else:
                cells.append("")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), sharex=True)
    panels = [("clean", "validation clean accuracy"), ("pgd", "validation PGD accuracy (full ε)"),
              ("train_attack", "training-attack accuracy (train batches)")]
    cmap = plt.get_cmap("tab10")
    for i, (name, run) in enumerate(runs.items()):
        style = "--" if not run["config"].get("regularisers") else "-"
        for ax, (key, _) in zip(axes, panels):
            ys = [100 * v for v in run[key]]
            xs = list(range(1, len(ys) + 1))
            ax.plot(xs, ys, style, marker="o", ms=4, color=cmap(i % 10), label=name)
    for ax, (_, label) in zip(axes, panels):
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    warm = next(iter(runs.values()))["config"]["train"].get("eps_warmup_epochs", 0)
    if warm:
        for ax in axes:
            ax.axvspan(0.5, warm + 0.5, color="0.9", zorder=0, label=None)
        axes[1].text(0.55, 95, f"ε warm-up ({warm:g} epochs)", fontsize=8, color="0.4")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=9, loc="center right", title="dashed: no\nregulariser", title_fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.89, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder holding one run folder per method")
    p.add_argument("--methods", nargs="*", help="run folder names, in table order (default: all, sorted)")
    p.add_argument("--out", required=True, help="output path without suffix (writes .md and .png)")
    p.add_argument("--title", default="Clean and PGD accuracy per epoch")
    p.add_argument("--command", default="", help="the command that produced the runs, for the table")
    args = p.parse_args()
    root = Path(args.root)
    names = args.methods or sorted(d.name for d in root.iterdir() if (d / "metrics.jsonl").exists())
    runs = {n: load_run(root / n) for n in names if (root / n / "metrics.jsonl").exists()}
    if not runs:
        raise SystemExit(f"no run folders with metrics.jsonl under {root}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.with_suffix(".md")).write_text(markdown(runs, args.title, args.command or "(not given)")
                                        + f"\n![plot]({out.with_suffix('.png').name})\n")
    plot(runs, args.title, out.with_suffix(".png"))
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
