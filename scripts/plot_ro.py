"""Table and plot of robust overfitting for a set of run folders (issue 4: PGD-AT with and without weight perturbation).

    python scripts/plot_ro.py runs/ro_cifar10 --methods pgd awp rwp --out results/ro_awp --command "..."

Reads, per run folder ROOT/METHOD: metrics.jsonl (per-epoch val_clean_acc / val_robust_acc, per-step
train_adv_acc), config.yaml and summary.json (test accuracy of the best and last checkpoints) if present; a run
still in progress is reported up to its last finished epoch. Writes OUT.md (command, settings, best-vs-last gaps,
per-epoch values) and OUT.png (validation clean and PGD accuracy and the training-attack accuracy per epoch).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from robustrain.reporting import Run, load_run, pct, plot_epoch_panels
from robustrain.reporting.markdown import robust_key

PANELS = [("val_clean_acc", "validation clean accuracy", "epoch"),
          ("val_robust_acc", "validation PGD-10 accuracy", "epoch"),
          ("train_adv_acc", "training-attack accuracy (train batches)", "epoch_mean")]


def perturbation(cfg: dict) -> str:
    wp = cfg.get("weight_perturbation")
    if not wp:
        return "none"
    return wp["name"] + "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in wp.items() if k not in ("name", "modules", "params")) + ")"


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
        out.update(test_key=key.removesuffix("_acc"), test_best=best_row[key], test_last=last_row[key],
                   test_gap=best_row[key] - last_row[key], test_clean_best=best_row["clean_acc"],
                   test_clean_last=last_row["clean_acc"], best_ckpt_epoch=best_row["epoch"])
    return out


def markdown(runs: dict[str, Run], title: str, command: str) -> str:
    first = next(iter(runs.values())).config
    d, a, v = first["data"], first["attack"], first["validation"]["attack"]
    lines = [
        f"# {title}", "",
        f"- command: `{command}`",
        f"- seed: {first['seed']} (every run); commit: <filled by lead>",
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
        lines.append(f"| {name} | {perturbation(run.config)} | {g['epochs']} | {val} | {test} | "
                     f"{run.summary.get('train_seconds', '– (unfinished)')} |")
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder holding one run folder per method")
    p.add_argument("--methods", nargs="*", help="run folder names, in table order (default: all, sorted)")
    p.add_argument("--out", required=True, help="output path without suffix (writes .md and .png)")
    p.add_argument("--title", default="Robust overfitting: PGD-AT with and without weight perturbation")
    p.add_argument("--command", default="", help="the command that produced the runs, for the table")
    args = p.parse_args()
    root = Path(args.root)
    names = args.methods or sorted(d.name for d in root.iterdir() if (d / "metrics.jsonl").exists())
    runs = {n: load_run(root / n) for n in names if (root / n / "metrics.jsonl").exists()}
    runs = {n: r for n, r in runs.items() if r.epochs}
    if not runs:
        raise SystemExit(f"no run folders with finished epochs under {root}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(runs, args.title, args.command or "(not given)")
                                      + f"\n![plot]({out.with_suffix('.png').name})\n")
    plot_epoch_panels(list(runs.values()), out.with_suffix(".png"), args.title, PANELS, mark_events=False, width=5.0)
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
