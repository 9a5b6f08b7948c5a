"""Table and plot of a training-procedure study (issue 18: weight averaging, FOMO, CURE against PGD-AT), several
seeds per method.

    python scripts/plot_procedure_study.py runs/procedures_mnist --runs pgd_seed0 pgd_seed1 ema_seed0 ema_seed1 \
        --out results/studies/wa_mnist/wa_mnist --command "..."

Run folders are named METHOD_seedN; the first method is the baseline. Reads metrics.jsonl (per-epoch validation),
config.yaml, summary.json (test accuracy of best and last; the ``weights`` column says whether the averaged weights
were evaluated) and environment.json (the commit each run ran at). Writes OUT.md (command, commits, settings, mean ±
sd over seeds and every run's numbers, per-epoch validation means) and OUT.png (validation PGD and clean accuracy per
epoch: mean over seeds, each seed faint).
"""
from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

from robustrain.reporting import Run, load_run
from robustrain.reporting.markdown import robust_key
from robustrain.reporting.plots import pyplot


def method_of(name: str) -> str:
    return name.rsplit("_seed", 1)[0]


def numbers(run: Run) -> dict:
    """Best / last validation PGD (%), best epoch, test robust and clean of best and last (%)."""
    xs, ys = run.epoch_series("val_robust_acc")
    i = max(range(len(ys)), key=lambda j: ys[j])
    out = {"best_val": 100 * ys[i], "best_epoch": int(xs[i]), "last_val": 100 * ys[-1],
           "last_val_clean": 100 * run.epoch_series("val_clean_acc")[1][-1]}
    best, last = run.test_row("best"), run.test_row("last")
    key = robust_key(last) if last else None
    if best and last and key:
        out.update(test_best=100 * best[key], test_last=100 * last[key], clean_best=100 * best["clean_acc"],
                   clean_last=100 * last["clean_acc"],
                   weights=last.get("weights", "training"), test_key=key.removesuffix("_acc"))
    return out


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def procedure_label(cfg: dict, base: dict | None = None) -> str:
    """The run's procedures ("none" without), preceded by its training attack where that differs from ``base``'s
    (the baseline's config; e.g. BETA-AT against PGD-AT)."""
    procs = cfg.get("procedures") or []
    label = "; ".join(p["name"] + "(" + ", ".join(f"{k}={v}" for k, v in p.items() if k != "name") + ")"
                      for p in procs) or "none"
    a = cfg.get("attack") or {}
    if base is not None and a != base.get("attack"):
        label = (f"attack {a.get('name')}(" + ", ".join(f"{k}={v}" for k, v in a.items() if k != "name" and v is not None)
                 + ")" + ("" if label == "none" else f"; {label}"))
    return label


def commit_of(run: Run) -> str:
    env = run.path / "environment.json"
    return json.loads(env.read_text()).get("git_commit", "unknown")[:7] if env.exists() else "unknown"


def markdown(groups: dict[str, list[Run]], title: str, command: str) -> str:
    first = next(iter(groups.values()))[0].config
    d, a, v = first["data"], first["attack"], first["validation"]["attack"]
    commits = sorted({commit_of(r) for runs in groups.values() for r in runs})
    key = next((numbers(r).get("test_key") for runs in groups.values() for r in runs if "test_key" in numbers(r)),
               "test")
    lines = [
        f"# {title}", "",
        f"- command: `{command}`",
        f"- commits the runs ran at: {', '.join(commits)}; table written {date.today().isoformat()}; machine: 2 CPU "
        "cores shared with other jobs",
        f"- data: {d['name']}, {d.get('train_subset') or 'all'} training images (augment={d.get('augment')}), "
        f"{d['val_size']} held-out training images for validation; model {first['model']['name']} "
        f"{first['model'].get('kwargs') or ''}",
        f"- training: PGD-{a.get('steps')} (step {a.get('step'):.4g}, ε = {first['threat']['eps']:.4g}), "
        f"{first['optim']['name']} lr {first['optim']['lr']:g} ({first['schedule']['name']}), batch {d['batch_size']}, "
        f"{first['train']['epochs']} epochs, ε warm-up {first['train'].get('eps_warmup_epochs', 0):g} epochs",
        f"- validation: PGD-{v.get('steps')} (step {v.get('step'):.4g}) after every epoch; test: {key} on "
        f"{first['eval'].get('n_ex') or 'all'} test images for best (validation-chosen) and last; a weight-averaging "
        "run validates and tests its averaged weights (column weights)",
        f"- seeds per method: {', '.join(str(len(r)) for r in groups.values())}; mean ± sample sd over seeds", "",
        "## Mean over seeds (%)", "",
        "| method | procedure (training attack where not the baseline's) | weights | best val PGD | best epoch | last val PGD | test robust best | test robust "
        "last | test clean best | test clean last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, runs in groups.items():
        ns = [numbers(r) for r in runs]

        def col(k: str) -> str:
            vals = [n[k] for n in ns if k in n]
            return mean_sd(vals) if vals else "–"

        lines.append(f"| {method} | {procedure_label(runs[0].config, first)} | {ns[0].get('weights', '–')} | {col('best_val')} | "
                     f"{col('best_epoch')} | {col('last_val')} | {col('test_best')} | {col('test_last')} | "
                     f"{col('clean_best')} | {col('clean_last')} |")
    lines += ["", "## Every run (%)", "",
              "| run | commit | best val PGD (epoch) | last val PGD | test robust best / last | test clean best / last "
              "| train s |", "|---|---|---|---|---|---|---|"]
    for runs in groups.values():
        for r in runs:
            n = numbers(r)
            test = (f"{n['test_best']:.1f} / {n['test_last']:.1f} | {n['clean_best']:.1f} / {n['clean_last']:.1f}"
                    if "test_best" in n else "– | –")
            lines.append(f"| {r.label} | {commit_of(r)} | {n['best_val']:.1f} ({n['best_epoch']}) | {n['last_val']:.1f} | "
                         f"{test} | {r.summary.get('train_seconds', '–')} |")
    lines += ["", "## Validation PGD accuracy per epoch, mean over seeds (%)", "",
              "| epoch | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    curves = {m: mean_curve(runs, "val_robust_acc") for m, runs in groups.items()}
    for e in range(max(len(c) for c in curves.values())):
        lines.append(f"| {e + 1} | " + " | ".join(f"{100 * c[e]:.1f}" if e < len(c) else "" for c in curves.values())
                     + " |")
    return "\n".join(lines) + "\n"


def mean_curve(runs: list[Run], key: str) -> list[float]:
    series = [r.epoch_series(key)[1] for r in runs]
    n = min(len(s) for s in series)
    return [statistics.mean(s[e] for s in series) for e in range(n)]


def plot(groups: dict[str, list[Run]], path: Path, title: str) -> None:
    plt = pyplot()
    base = next(iter(groups.values()))[0].config
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, (method, runs) in enumerate(groups.items()):
        colour = plt.get_cmap("tab10")(i)
        for ax, key, label in ((axes[0], "val_robust_acc", "validation PGD accuracy"),
                               (axes[1], "val_clean_acc", "validation clean accuracy")):
            for r in runs:
                ys = r.epoch_series(key)[1]
                ax.plot(range(1, len(ys) + 1), [100 * y for y in ys], "-", color=colour, alpha=0.25, lw=1)
            ys = mean_curve(runs, key)
            ax.plot(range(1, len(ys) + 1), [100 * y for y in ys], "-o", ms=3, color=colour,
                    label=f"{method}: {procedure_label(runs[0].config, base)} ({len(runs)} seeds)")
            ax.set_title(label + " (mean over seeds; seeds faint)", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder holding the run folders")
    p.add_argument("--runs", nargs="+", required=True, help="run folder names METHOD_seedN; the first method is the baseline")
    p.add_argument("--out", required=True, help="output path without suffix (writes .md and .png)")
    p.add_argument("--title", default=None)
    p.add_argument("--command", default="(not given)")
    args = p.parse_args()
    root = Path(args.root)
    groups: dict[str, list[Run]] = {}
    for name in args.runs:
        run = load_run(root / name)
        if run.epochs:
            groups.setdefault(method_of(name), []).append(run)
    if not groups:
        raise SystemExit(f"no finished runs under {root}")
    title = args.title or f"PGD-AT vs {', '.join(list(groups)[1:])} on {next(iter(groups.values()))[0].config['data']['name']}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(groups, title, args.command) + f"\n![plot]({out.with_suffix('.png').name})\n")
    plot(groups, out.with_suffix(".png"), title)
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
