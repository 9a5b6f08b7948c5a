"""Table and plot of clean and PGD accuracy per epoch for a set of run folders (issue 3's CO study).

    python scripts/plot_runs.py runs/co_mnist --methods fgsm elle ... --out results/studies/co_mnist \
        --title "..." --command "scripts/reproduce_co.sh"

Reads, per run folder ROOT/METHOD: metrics.jsonl (per-epoch val_clean_acc / val_robust_acc; per-step
train_adv_acc, the accuracy on the training attack's points), config.yaml, summary.json (test accuracy of the
best and last checkpoints) and eval_fgsm_last.json if present (test FGSM accuracy of the last checkpoint).
Writes OUT.md (command, seed, settings, tables) and OUT.png (clean, PGD and training-attack accuracy per epoch).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from robustrain.reporting import Run, describe, load_run, pct, plot_epoch_panels

PANELS = [("val_clean_acc", "validation clean accuracy", "epoch"),
          ("val_robust_acc", "validation PGD accuracy (full ε)", "epoch"),
          ("train_adv_acc", "training-attack accuracy (train batches)", "epoch_mean")]
VAL_FGSM_PANEL = ("val_fgsm_acc", "validation FGSM accuracy (zero init, step ε)", "epoch")


def fgsm_last(run: Run) -> dict | None:
    return run.evals.get("eval_fgsm_last")


def markdown(runs: dict[str, Run], title: str, command: str) -> str:
    first = next(iter(runs.values())).config
    val = first["validation"]["attack"]
    ev = first["eval"]["attack"]
    test_pgd = f"PGD-{ev.get('steps')}-{ev.get('restarts', 1)}"
    lines = [
        f"# {title}", "",
        f"- command: `{command}`",
        f"- seed: {first['seed']} (every run); commit(s) the runs were made at (summary.json): "
        f"{', '.join(sorted({str(r.summary.get('git_commit'))[:12] for r in runs.values()}))}",
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
        f"test clean (last) | test {test_pgd} (last) | test FGSM (last) | test {test_pgd} (best) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        last, best = run.test_row("last"), run.test_row("best")
        pgd_key = next((k for k in (last or {}) if k.startswith("pgd") and k.endswith("_acc")), None)
        fgsm = fgsm_last(run)
        epochs, pgd = run.epoch_series("val_robust_acc")
        clean = run.epoch_series("val_clean_acc")[1]
        best_ep = max(range(len(pgd)), key=lambda i: pgd[i]) if pgd else None
        lines.append(
            f"| {name} | {describe(run.config)} | {pct(clean[-1] if clean else None)} | "
            f"{pct(pgd[-1] if pgd else None)} | "
            + (f"{pct(pgd[best_ep])} ({int(epochs[best_ep])})" if best_ep is not None else "–") + " | "
            + (f"{pct(last['clean_acc'])} | {pct(last[pgd_key])}" if last and pgd_key else "– | –") + " | "
            + (f"{pct(fgsm['fgsm_acc'])}" if fgsm else "–") + " | "
            + (f"{pct(best[pgd_key])}" if best and pgd_key else "–") + " | "
            + f"{run.summary.get('train_seconds', '–')} |"
        )
    lines += ["", "## Per epoch: val clean / val PGD / train attack acc (%)", ""]
    n = max(len(r.epochs) for r in runs.values())
    lines.append("| method | " + " | ".join(f"ep {e + 1}" for e in range(n)) + " |")
    lines.append("|---|" + "---|" * n)
    for name, run in runs.items():
        cells = []
        clean, pgd = run.epoch_series("val_clean_acc")[1], run.epoch_series("val_robust_acc")[1]
        train_attack = run.epoch_means("train_adv_acc")
        for i in range(n):
            if i < len(run.epochs):
                t = train_attack[i] if i < len(train_attack) else None
                cells.append(f"{pct(clean[i])} / {pct(pgd[i])} / {pct(t)}")
            else:
                cells.append("")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder holding one run folder per method")
    p.add_argument("--methods", nargs="*", help="run folder names, in table order (default: all, sorted)")
    p.add_argument("--out", required=True, help="output path without suffix (writes .md and .png)")
    p.add_argument("--title", default="Clean and PGD accuracy per epoch")
    p.add_argument("--command", default="", help="the command that produced the runs, for the table")
    p.add_argument("--val-fgsm", action="store_true",
                   help="add a panel with the validation FGSM accuracy (zero-init, step ε): above PGD it flags CO")
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
    panels = PANELS[:2] + [VAL_FGSM_PANEL] + PANELS[2:] if args.val_fgsm else PANELS
    plot_epoch_panels(list(runs.values()), out.with_suffix(".png"), args.title, panels, mark_events=False,
                      dashed_without_regulariser=True, width=5.0)
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
