#!/usr/bin/env python3
"""The signal_rise rule (CO declared from a declared training signal) on recorded live MNIST runs (issue 15).

    # 1. live runs that record AAER's abnormal-example rate (AAER at zero weight: the signal, no regularisation)
    OMP_NUM_THREADS=2 python scripts/monitor_eval.py live --mnist MNIST --out-dir runs/monitor_signals \
        --methods fgsm nfgsm --seeds 0 1 --probe-n 200 --set "regularisers=[{name: aaer, lam1: 0, lam2: 0, lam3: 0}]"
    OMP_NUM_THREADS=2 python scripts/monitor_eval.py live --mnist MNIST --out-dir runs/monitor_signals \
        --methods fgsm_rs --seeds 0 --probe-n 200 --set "regularisers=[{name: aaer, lam1: 0, lam2: 0, lam3: 0}]"

    # 2. the recorded histories (checks with their signals, the probe's collapse step) and the table
    python scripts/monitor_signals.py runs/monitor_signals/* --data results/studies/data/monitor_signals_mnist.json \
        --out results/studies/monitor_signals_mnist.md

tests/test_monitor_signal_rule.py replays the rule on the recorded histories of step 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robustrain.training.monitor_replay import first_check_declaration  # noqa: E402
from robustrain.training.monitor_rules import History, build_rule  # noqa: E402
from robustrain.training.overfitting import Check  # noqa: E402


def checks_of(run: dict[str, Any]) -> list[Check]:
    return [Check(**c) for c in run["checks"]]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="live run folders (monitor_eval.json)")
    p.add_argument("--data", type=Path, required=True, help="where the recorded histories go (JSON)")
    p.add_argument("--out", type=Path, required=True, help="markdown table")
    args = p.parse_args(argv)
    runs = []
    for d in args.runs:
        r = json.loads((d / "monitor_eval.json").read_text())
        runs.append({k: r[k] for k in ("method", "seed", "commit", "overrides", "every", "collapse_step",
                                       "declared_step", "declared_rule", "train_seconds")}
                    | {"checks": r["checks"]})
    args.data.parent.mkdir(parents=True, exist_ok=True)
    args.data.write_text(json.dumps({"source": "scripts/monitor_eval.py live (see scripts/monitor_signals.py)",
                                     "runs": runs}, indent=0))
    rule = build_rule("signal_rise")
    lines = ["# signal_rise: catastrophic overfitting declared from AAER's abnormal-example rate (live MNIST)", "",
             f"Runs: `configs/mnist_fgsm_monitor.yaml` (ε 0 → 0.3 over 2 epochs, checks of 256 held-out images every 50 "
             f"steps, `monitor.action: warn`) with AAER at zero weight (`regularisers=[{{name: aaer, lam1: 0, lam2: 0, "
             f"lam3: 0}}]`: it logs the share of each batch whose loss the training attack lowers, and adds nothing "
             f"to the loss). Commands in `scripts/monitor_signals.py`; commits {', '.join(sorted({r['commit'] for r in runs}))}. "
             f"Recorded histories: `{args.data}`. "
             f"Collapse (ground truth) = the probe's first PGD accuracy below half the best of the five before "
             f"(monitor_mnist_live.md). Rule: `signal_rise` at its defaults ({rule.signal} above max({rule.floor:g}, "
             f"{rule.factor:g} × the median of the {rule.baseline} checks before)); lead = checks from its declaration "
             f"to the collapse.", "",
             "| run | collapse step (probe) | signal_rise declared (step) | lead (checks) | default rules declared (step, rule) | "
             "abnormal rate: median of checks before the collapse / at the declaration / max |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        chk = checks_of(r)
        step = first_check_declaration(rule, chk)
        series = rule.series(History(checks=chk))
        collapse = r["collapse_step"]
        before = [v for c, v in zip(chk, series) if collapse is None or c.step < collapse]
        at = next((v for c, v in zip(chk, series) if c.step == step), None)
        lead = (collapse - step) / r["every"] if step is not None and collapse is not None else None
        med = sorted(before)[len(before) // 2] if before else float("nan")
        lines.append(f"| {r['method']} s{r['seed']} | {collapse if collapse is not None else 'none'} | "
                     f"{step if step is not None else 'none'} | {lead if lead is not None else '—'} | "
                     f"{r['declared_step']} ({r['declared_rule']}) | {med:.4f} / "
                     f"{'—' if at is None else f'{at:.4f}'} / {max(series):.4f} |")
    lines += ["", "Cost: the signal needs the zero-weight AAER term, which reuses the training attack's start-point forward: "
              "0.99× a plain FGSM step (results/benchmarks/monitor_signal_aaer.md, target ≤ 1.02×); the rule reads "
              "numbers the monitor already holds. The rule is on only where `monitor.rules` names it (e.g. "
              "`monitor.rules: [pgd_drop, fgsm_pgd_gap, robust_overfitting, signal_rise]`).", "",
              "Reading (what these runs show, not a claim beyond them):", "",
              "- On zero-init FGSM the abnormal rate stays at 0 while the run is healthy and rises to 5–35 % — but only "
              "after the probe's collapse: the rule declares 5 and 17 checks late. The FGSM−PGD gap rule declared "
              "both runs before the collapse. The signal confirms a collapse; it does not warn of one here.",
              "- On FGSM-RS the rate stays below 0.1 % through the collapse (the random start's loss is almost never "
              "above the FGSM point's), so the rule does not fire: it misses 1 of 3 collapsing runs.",
              "- On N-FGSM (healthy) it never fires (rate ≤ 0.02 %).", ""]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} and {args.data}")


if __name__ == "__main__":
    main()
