"""Reports from run folders, without a network: PNG plots and markdown (``robustrain report``), and the
seed-aggregated tables of ``results/`` (``scripts/make_results_tables.py``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .markdown import report_markdown, run_table, seed_table
from .plots import plot_epoch_panels, plot_monitor_checks, plot_regularisers, plot_sweep, plot_training
from .runs import Run, describe, load_run, load_runs, pct

__all__ = ["Run", "describe", "load_run", "load_runs", "pct", "plot_epoch_panels", "plot_monitor_checks",
           "plot_regularisers", "plot_sweep", "plot_training", "report_markdown", "run_table", "seed_table", "write_report"]


def write_report(folders: Sequence[str | Path], out: str | Path, *, title: str | None = None,
                 command: str = "robustrain report") -> dict[str, Path]:
    """Plots and ``report.md`` for the run folders into ``out``; returns the written files by name."""
    runs = load_runs(list(folders))
    out = Path(out)
    if title is None:
        title = "run " + runs[0].label if len(runs) == 1 else f"{len(runs)} runs: " + ", ".join(r.label for r in runs)
    written: dict[str, Path | None] = {
        "accuracy": plot_epoch_panels(runs, out / "accuracy.png", f"{title}: accuracy per epoch"),
        "training": plot_training(runs, out / "training.png", f"{title}: training curves"),
        "regularisers": plot_regularisers(runs, out / "regularisers.png", f"{title}: regulariser terms"),
        "monitor": plot_monitor_checks(runs, out / "monitor.png", f"{title}: overfitting monitor checks"),
    }
    images = {k: p for k, p in written.items() if p is not None}
    md = out / "report.md"
    md.write_text(report_markdown(runs, {k: p.name for k, p in images.items()}, command, title))
    return {**images, "markdown": md}
