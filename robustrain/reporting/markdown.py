"""Markdown from run folders: the per-run summary of ``robustrain report`` and the seed-aggregated tables of
``scripts/make_results_tables.py``. Every number is read from the run folders."""
from __future__ import annotations

import statistics
from typing import Sequence

from ..tables import format_table
from .runs import EVENT_STYLE, Run, describe, number, pct


def eps_label(cfg: dict) -> str:
    """The radius as written in the recipes: ``8/255`` when ε·255 is a whole number under L∞, else the value."""
    t = cfg.get("threat") or {}
    eps = float(t.get("eps", float("nan")))
    if t.get("norm", "linf") == "linf" and abs(eps * 255 - round(eps * 255)) < 1e-6 and eps < 1:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


def robust_key(row: dict | None) -> str | None:
    """The robust-accuracy column of a summary.json test row (e.g. ``pgd-50-10_acc``)."""
    return next((k for k in (row or {}) if k.endswith("_acc") and k != "clean_acc"), None)


def _test(run: Run, which: str, robust: bool) -> float | None:
    row = run.test_row(which)
    key = robust_key(row) if robust else "clean_acc"
    return number(row.get(key)) if row and key else None


def _best_val(run: Run) -> tuple[float | None, int | None]:
    xs, ys = run.epoch_series("val_robust_acc")
    if not ys:
        return None, None
    i = max(range(len(ys)), key=lambda j: ys[j])
    return ys[i], int(xs[i])


def _last(run: Run, key: str) -> float | None:
    ys = run.epoch_series(key)[1]
    return ys[-1] if ys else None


def _fmt(v: float | None) -> str:
    return pct(v)


def run_table(runs: Sequence[Run]) -> str:
    """One row per run: composition, last-epoch validation accuracy, best validation PGD, test accuracy, events."""
    rows = []
    for r in runs:
        best, best_epoch = _best_val(r)
        robust_name = robust_key(r.test_row("last") or r.test_row("best")) or "robust_acc"
        counts = {}
        for e in r.events:
            short = EVENT_STYLE.get(e["event"], (e["event"],))[0]
            counts[short] = counts.get(short, 0) + 1
        rows.append({
            "run": r.label, "training": describe(r.config), "data": (r.config.get("data") or {}).get("name", "?"),
            "ε": eps_label(r.config), "epochs": len(r.epochs),
            "val clean": pct(_last(r, "val_clean_acc")), "val FGSM": pct(_last(r, "val_fgsm_acc")),
            "val PGD": pct(_last(r, "val_robust_acc")),
            "best val PGD (ep)": f"{pct(best)} ({best_epoch})" if best is not None else "–",
            "test clean best/last": f"{_fmt(_test(r, 'best', False))} / {_fmt(_test(r, 'last', False))}",
            "test attack": robust_name.removesuffix("_acc") if r.summary else "–",
            "test robust best/last": f"{_fmt(_test(r, 'best', True))} / {_fmt(_test(r, 'last', True))}",
            "events": ", ".join(f"{n}×{k}" for k, n in counts.items()) or "none",
            "train s": r.summary.get("train_seconds", "–"),
        })
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return format_table(rows, columns)


def report_markdown(runs: Sequence[Run], images: dict[str, str], command: str, title: str) -> str:
    """The markdown summary of ``robustrain report``: table, events with their evidence, evaluation reports, plots."""
    lines = [f"# {title}", "", f"Produced by `{command}` from the run folders "
             + ", ".join(f"`{r.path}`" for r in runs) + " (metrics.jsonl, config.yaml, summary.json).", "",
             "Validation accuracy (%) is the last epoch's on the held-out split; `best` is the checkpoint with the "
             "highest validation PGD accuracy, `last` the final model; test accuracy (%) is from summary.json.", "",
             run_table(runs), ""]
    events = [(r, e) for r in runs for e in r.events]
    lines += ["## Monitor events", ""]
    if not events:
        lines.append("None of these runs declared an event.")
    for r, e in events:
        lines.append(f"- {r.label}, epoch {r.event_epoch(e):.2f} (step {e['step']}): **{e['event']}** — "
                     f"{e.get('message', '')}")
    reports = [(r, name, rep) for r in runs for name, rep in r.evals.items()]
    if reports:
        lines += ["", "## Evaluation reports", ""]
        for r, name, rep in reports:
            accs = {k: v for k, v in rep.items() if k.endswith("_acc") and number(v) is not None}
            shown = ", ".join(f"{k} {pct(v)}%" for k, v in accs.items()) or "(no *_acc fields)"
            lines.append(f"- {r.label}/{name}.json: {shown}" + (f" (n = {rep['n_ex']})" if "n_ex" in rep else ""))
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({path})" for name, path in images.items()]
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float]) -> str:
    """Mean ± standard deviation of percentages, 2 decimals."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def seed_table(runs: Sequence[Run]) -> str:
    """Runs grouped by dataset, training composition and ε; mean ± standard deviation over their seeds."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        key = ((r.config.get("data") or {}).get("name", "?"), describe(r.config), eps_label(r.config))
        groups.setdefault(key, []).append(r)
    rows = []
    for (data, training, eps), members in groups.items():
        co = sum(1 for r in members if any(e["event"] == "catastrophic_overfitting" for e in r.events))
        best_vals = [100 * b for b, _ in map(_best_val, members) if b is not None]
        rows.append({
            "data": data, "training": training, "ε": eps,
            "seeds": ",".join(str(r.config.get("seed")) for r in members),
            "test clean (last)": _mean_std([100 * v for r in members if (v := _test(r, "last", False)) is not None]),
            "test robust (last)": _mean_std([100 * v for r in members if (v := _test(r, "last", True)) is not None]),
            "test clean (best)": _mean_std([100 * v for r in members if (v := _test(r, "best", False)) is not None]),
            "test robust (best)": _mean_std([100 * v for r in members if (v := _test(r, "best", True)) is not None]),
            "best val PGD": _mean_std(best_vals),
            "runs with CO declared": f"{co}/{len(members)}" if any(r.checks for r in members) else "no monitor",
        })
    return format_table(rows, list(rows[0])) if rows else "(no runs)"
