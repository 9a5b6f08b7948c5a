"""Reading run folders without a network: ``metrics.jsonl`` (steps, epochs, monitor checks and events),
``config.yaml``, ``summary.json`` and any evaluation reports (``eval*.json``, ``report.json``)."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import RobustrainError
from ..tables import pct as tables_pct
from ..training.callbacks import read_jsonl

EVENT_STYLE = {  # kind -> (short label, colour)
    "catastrophic_overfitting": ("CO", "tab:red"),
    "robust_overfitting": ("RO", "tab:purple"),
    "rollback": ("rollback", "tab:green"),
    "give_up": ("give up", "black"),
}


@dataclass
class Run:
    """One run folder, parsed."""

    path: Path
    label: str
    config: dict
    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    evals: dict[str, dict] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> float:
        """From the first epoch record (epochs are whole); 1 when no epoch finished."""
        first = next((r for r in self.epochs if r.get("epoch")), None)
        return first["step"] / first["epoch"] if first else 1.0

    def epoch_series(self, key: str) -> tuple[list[float], list[float]]:
        """(epoch, value) of a per-epoch metric such as ``val_robust_acc``, skipping epochs without it."""
        pts = [(float(r["epoch"]), number(r.get(key))) for r in self.epochs]
        return [x for x, y in pts if y is not None], [y for _, y in pts if y is not None]

    def step_series(self, key: str) -> tuple[list[float], list[float]]:
        """(fractional epoch, value) of a per-step metric such as ``loss`` or ``elle/e_lin``."""
        spe = self.steps_per_epoch
        pts = [(r["step"] / spe, number(r.get(key))) for r in self.steps]
        return [x for x, y in pts if y is not None], [y for _, y in pts if y is not None]

    def epoch_means(self, key: str) -> list[float]:
        """Mean of a per-step metric over each epoch's logged steps (epoch 1 first)."""
        acc: dict[int, list[float]] = {}
        for r in self.steps:
            v = number(r.get(key))
            if v is not None:
                acc.setdefault(int(r["epoch"]), []).append(v)
        return [sum(v) / len(v) for _, v in sorted(acc.items())]

    def event_epoch(self, event: dict) -> float:
        """Where an event lies on the epoch axis (its step over the steps per epoch)."""
        return event["step"] / self.steps_per_epoch

    def term_keys(self) -> list[str]:
        """The regularisers' logged terms (``name/key``) in first-seen order."""
        keys: dict[str, None] = {}
        for r in self.steps:
            for k in r:
                if "/" in k:
                    keys.setdefault(k, None)
        return list(keys)

    def test_row(self, which: str) -> dict | None:
        return next((r for r in self.summary.get("test", []) if r.get("checkpoint") == which), None)


def number(v: Any) -> float | None:
    """A finite float, or None (JSONL writes non-finite floats as strings)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def load_run(folder: str | Path, label: str | None = None) -> Run:
    folder = Path(folder)
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise RobustrainError(
            f"{str(folder)!r} is not a run folder: it has no metrics.jsonl (a run folder is what `robustrain train` "
            "writes: runs/NAME or --run-dir)."
        )
    records, torn = read_jsonl(metrics)
    if torn is not None:
        warnings.warn(f"{str(metrics)!r}: skipped its torn last line (the process writing it was killed): "
                      f"{torn[:60]!r}", RuntimeWarning, stacklevel=2)
    cfg_path = folder / "config.yaml"
    run = Run(folder, label or folder.name, yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {})
    for r in records:
        kind = r.get("kind")
        if kind == "step":
            run.steps.append(r)
        elif kind == "epoch":
            run.epochs.append(r)
        elif kind == "event" and r.get("event") == "monitor_check":
            run.checks.append(r)
        elif kind == "event":
            run.events.append(r)
    if (folder / "summary.json").exists():
        run.summary = json.loads((folder / "summary.json").read_text())
        for row in run.summary.get("test", []):
            as_fractions(row, old=run.summary.get("units") is None)
    for path in sorted([*folder.glob("eval*.json"), *folder.glob("report.json")]):
        try:
            ev = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict):  # report.json has no top-level *_acc fields; an old eval.json has them in percent
            run.evals[path.stem] = as_fractions(ev, old=ev.get("units") is None)
    return run


def as_fractions(row: dict, *, old: bool) -> dict:
    """``row`` with its top-level ``*_acc`` numbers as fractions: files written before the units convention (no
    ``units`` key: summary.json test rows and eval.json in percent) are converted in place, new ones kept."""
    if old:
        for k, v in row.items():
            if k.endswith("_acc") and number(v) is not None:
                row[k] = float(v) / 100
    return row


def load_runs(folders: list[str | Path]) -> list[Run]:
    """Load several run folders; labels are the folder names, with the parent's name where two would clash."""
    paths = [Path(f) for f in folders]
    names = [p.resolve().name for p in paths]
    labels = [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]
    return [load_run(p, label) for p, label in zip(paths, labels)]


def weight_perturbation_label(cfg: dict) -> str:
    """``awp(gamma=0.01)`` for a config's weight perturbation (its options but the parameter rule), or ``none``."""
    wp = cfg.get("weight_perturbation")
    if not wp:
        return "none"
    return wp["name"] + "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in wp.items() if k not in ("name", "modules", "params")) + ")"


def describe(cfg: dict) -> str:
    """The training composition in one line: attack with its options, then each regulariser, the objective, the
    weight perturbation and each training procedure."""
    a = cfg.get("attack") or {}
    attack = a.get("name", "?") + "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}"
                                          for k, v in a.items() if k not in ("name", "bn_mode"))
    def section(r: dict) -> str:
        return r["name"] + "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in r.items() if k != "name") + ")"

    regs = "; ".join(section(r) for r in cfg.get("regularisers") or [])
    objective = cfg.get("objective") or {}
    extra = [f"objective {objective['name']}" + "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}"
                                                         for k, v in objective.items() if k != "name")
             ] if objective.get("name", "ce") != "ce" else []
    if cfg.get("weight_perturbation"):
        extra.append(weight_perturbation_label(cfg))
    extra += [f"procedure {section(p)}" for p in cfg.get("procedures") or []]
    return f"{attack}" + (f" + {regs}" if regs else "") + "".join(f" + {e}" for e in extra)


def pct(v: float | None) -> str:
    """An accuracy (a fraction) in percent with 2 decimals (README "Units"); "–" for None."""
    return "–" if v is None else tables_pct(v)
