"""Markdown tables (no heavy imports: used by the CLI, the final evaluation and the run reports)."""
from __future__ import annotations

from typing import Any


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]  # rows may be empty
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


# -- units: one convention for every output (README, "Units") --------------------------------------------------
# Accuracies are fractions in [0, 1] in every machine-readable output (JSON, JSONL, W&B) under names without a unit
# (clean_acc, robust_acc, val/pgd_acc) and percentages with 2 decimals in every human output (console, markdown,
# plots). A radius that is k/255 is printed as the fraction string with its float: "8/255 (0.03137)".
UNITS = "accuracies are fractions in [0, 1]"
"""The ``units`` note of every JSON file robustrain writes with accuracies (summary.json, eval.json, sweep.json, ...);
a reader takes a file without it for the old format (summary.json and eval.json in percent)."""


def pct(fraction: float | None) -> str:
    """An accuracy (a fraction) as people read it: ``0.8663 -> "86.63"`` (percent, 2 decimals; "" for None)."""
    return "" if fraction is None else f"{100 * float(fraction):.2f}"


def radius_fraction(value: float) -> str | None:
    """``"8/255"`` when ``value`` is k/255 for a k that is a multiple of 0.5 (not 0), else None."""
    k2 = float(value) * 255 * 2
    if value and abs(k2 - round(k2)) < 1e-6 * max(1.0, abs(k2)):
        return f"{round(k2) / 2:g}/255"
    return None


def format_radius(value: float) -> str:
    """A radius as papers write it: ``"8/255"`` for k/255, else the short decimal (``"0.5"``, ``"12"``)."""
    return radius_fraction(value) or f"{float(value):.6g}"


def radius_label(value: float) -> str:
    """A radius for people: ``"8/255 (0.03137)"`` for k/255 (the fraction and its float), else ``"0.5"``."""
    frac = radius_fraction(value)
    return f"{frac} ({float(value):.4g})" if frac else f"{float(value):.6g}"
