"""Table and plot of robust overfitting for a set of run folders (issue 4: PGD-AT with and without weight perturbation).

    python scripts/plot_ro.py runs/ro_cifar10 --methods pgd awp rwp --out results/studies/ro_cifar10 --command "..."

Reads, per run folder ROOT/METHOD: metrics.jsonl (per-epoch val_clean_acc / val_robust_acc, per-step
train_adv_acc), config.yaml and summary.json (test accuracy of the best and last checkpoints) if present; a run
still in progress is reported up to its last finished epoch. Writes OUT.md (command, settings, best-vs-last gaps,
per-epoch values) and OUT.png (validation clean and PGD accuracy and the training-attack accuracy per epoch).
"""
from __future__ import annotations

import argparse
import os
from datetime import date
from pathlib import Path

from robustrain.provenance import git_commit
from robustrain.reporting import Run, load_run, pct
from robustrain.reporting.plots import pyplot
from robustrain.reporting.runs import weight_perturbation_label
from robustrain.reporting.markdown import robust_key

PANELS = [("val_clean_acc", "validation clean accuracy", "epoch"),
          ("val_robust_acc", "validation PGD-10 accuracy", "epoch"),
          ("train_adv_acc", "training-attack accuracy (train batches)", "epoch_mean")]


def gaps(run: Run) -> dict:
    """Best and last validation PGD accuracy (%) and, when the run finished, test robust accuracy of best/last."""
    xs, ys = run.epoch_series("val_robust_acc")
    out: dict = {"epochs": len(ys)}
    if ys:
        i = max(range(len(ys)), key=lambda j: ys[j])
        out.update(best=100 * ys[i], best_epoch=int(xs[i]), last=100 * ys[-1], gap=100 * (ys[i] - ys[-1]))
    best_row, last_row = run.test_row("best"), run.test_row("last")
    key = robust_key(last_row)
    if best_row and last_row and key:
        out.update(test_key=key.removesuffix("_acc"), test_best=100 * best_row[key], test_last=100 * last_row[key],
                   test_gap=100 * (best_row[key] - last_row[key]), test_clean_best=100 * best_row["clean_acc"],
                   test_clean_last=100 * last_row["clean_acc"], best_ckpt_epoch=best_row["epoch"])
    return out


def markdown(runs: dict[str, Run], title: str, command: str, commit: str) -> str:
    first = next(iter(runs.values())).config
    d, a, v = first["data"], first["attack"], first["validation"]["attack"]
    lines = [
        f"# {title}", "",
        f"- command: `{command}`",
        f"- seed: {first['seed']} (every run); commit: {commit}; date: {date.today().isoformat()}; machine: "
        f"{os.cpu_count()} CPU cores shared with other jobs, 1 thread per run",
        f"- data: {d['name']}, {d.get('train_subset') or 'all'} training images, no augmentation "
        f"(augment={d.get('augment')}), {d['val_size']} held-out training images for validation; model "
        f"{first['model']['name']} {first['model'].get('kwargs') or ''}",
        f"- training: PGD-{a.get('steps')} (step {a.get('step'):.4g}, ε = {first['threat']['eps']:.4g}), "
        f"{first['optim']['name']} lr {first['optim']['lr']:g} ({first['schedule']['name']}), batch {d['batch_size']}, "
        f"{first['train']['epochs']} epochs, ε warm-up {first['train'].get('eps_warmup_epochs', 0):g} epochs",
        f"- validation: PGD-{v.get('steps')} (step {v.get('step'):.4g}) after every epoch, eval mode; test: "
        f"{first['eval']['attack']} on {first['eval'].get('n_ex') or 'all'} test images, best (validation-chosen) "
        "and last checkpoints",
        "- gap = best − last (percentage points): how much robust accuracy the final model lost to robust "
        "overfitting", "",
        "## Best vs last robust accuracy (%)", "",
        "| method | weight perturbation | epochs run | best val PGD (epoch) | last val PGD | val gap | "
        "test robust best / last | test gap | test clean best / last | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        g = gaps(run)
        test = (f"{g['test_best']:.1f} / {g['test_last']:.1f} | {g['test_gap']:+.1f} | "
                f"{g['test_clean_best']:.1f} / {g['test_clean_last']:.1f}") if "test_gap" in g else "– | – | –"
        val = (f"{g['best']:.1f} ({g['best_epoch']}) | {g['last']:.1f} | {g['gap']:+.1f}") if "gap" in g else "– | – | –"
        lines.append(f"| {name} | {weight_perturbation_label(run.config)} | {g['epochs']} | {val} | {test} | "
                     f"{run.summary.get('train_seconds', '– (unfinished)')} |")
    base_name, base = next(iter(runs.items()))
    bg = gaps(base)
    if len(runs) > 1 and "gap" in bg:
        lines += ["", f"Against {base_name} (a gap that closes is a smaller number; computed from the table):", ""]
        for name, run in list(runs.items())[1:]:
            g = gaps(run)
            if "gap" not in g:
                continue
            test = (f", test gap {g['test_gap']:+.1f} vs {bg['test_gap']:+.1f}"
                    if "test_gap" in g and "test_gap" in bg else "")
            clean = run.epoch_series("val_clean_acc")[1]
            learned = "" if clean[-1] >= 0.15 else (f" — **ended at chance** (validation clean accuracy "
                                                    f"{pct(clean[-1])} % at the last epoch): its gap means nothing")
            lines.append(f"- {name}: validation gap {g['gap']:+.1f} vs {bg['gap']:+.1f}{test}; best validation PGD "
                         f"{g['best']:.1f} vs {bg['best']:.1f}, reached at epoch {g['best_epoch']} vs "
                         f"{bg['best_epoch']}; last {g['last']:.1f} vs {bg['last']:.1f}{learned}")
    lines += ["", "## Per epoch: val clean / val PGD / train attack acc (%)", ""]
    n = max(len(r.epochs) for r in runs.values())
    lines.append("| epoch | " + " | ".join(runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    series = {name: (r.epoch_series("val_clean_acc")[1], r.epoch_series("val_robust_acc")[1],
                     r.epoch_means("train_adv_acc")) for name, r in runs.items()}
    for e in range(n):
        cells = []
        for clean, pgd, train in series.values():
            cells.append(f"{pct(clean[e])} / {pct(pgd[e])} / {pct(train[e] if e < len(train) else None)}"
                         if e < len(pgd) else "")
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, Run], path: Path, title: str) -> None:
    """Three panels; each panel's accuracy axis fits its data (robust accuracy here is far below 100 %), the best
    validation epoch of each run is marked on the PGD panel."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS) + 1.8, 4.4), squeeze=False)
    for i, (name, run) in enumerate(runs.items()):
        colour = plt.get_cmap("tab10")(i)
        for ax, (key, label, source) in zip(axes[0], PANELS):
            ys = run.epoch_means(key) if source == "epoch_mean" else run.epoch_series(key)[1]
            ax.plot(range(1, len(ys) + 1), [100 * v for v in ys], "-o", ms=2.5, color=colour,
                    label=f"{name}: {weight_perturbation_label(run.config)}")
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
        g = gaps(run)
        if "best_epoch" in g:
            axes[0][1].plot([g["best_epoch"]], [g["best"]], "*", ms=12, color=colour)
    axes[0][1].text(0.98, 0.97, "★ best validation epoch", transform=axes[0][1].transAxes, ha="right", va="top",
                    fontsize=8, color="0.35")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(runs))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder holding one run folder per method")
    p.add_argument("--methods", nargs="*", help="run folder names, in table order (default: all, sorted)")
    p.add_argument("--out", required=True, help="output path without suffix (writes .md and .png)")
    p.add_argument("--title", default="Robust overfitting: PGD-AT with and without weight perturbation")
    p.add_argument("--command", default="", help="the command that produced the runs, for the table")
    p.add_argument("--commit", default=None, help="the commit the runs ran at (default: git rev-parse --short HEAD)")
    args = p.parse_args()
    commit = args.commit or git_commit(short=True, dirty_suffix="", cwd=Path.cwd()) or "unknown"
    root = Path(args.root)
    names = args.methods or sorted(d.name for d in root.iterdir() if (d / "metrics.jsonl").exists())
    runs = {n: load_run(root / n) for n in names if (root / n / "metrics.jsonl").exists()}
    runs = {n: r for n, r in runs.items() if r.epochs}
    if not runs:
        raise SystemExit(f"no run folders with finished epochs under {root}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(runs, args.title, args.command or "(not given)", commit)
                                      + f"\n![plot]({out.with_suffix('.png').name})\n")
    plot(runs, out.with_suffix(".png"), args.title)
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
