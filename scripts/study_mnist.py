"""A method against its baseline on MNIST at CPU scale: train a recipe and its variants, then the table and plot.

    python scripts/study_mnist.py dom --recipe mnist_fgsm_rs \
        --variant baseline= \
        --variant "dom_re=procedures=[{name: dom, threshold: 0.01}]"

Each ``--variant NAME=OVERRIDES`` trains ``configs/<recipe>.yaml`` with the overrides (``;``-separated ``key=value``
as ``--set`` takes them; empty: the recipe itself) into ``runs/<study>_mnist/NAME`` (skipped when its summary.json
exists), evaluates zero-init FGSM on its last checkpoint, and ``scripts/plot_runs.py`` writes
``results/studies/<study>_mnist.md`` / ``.png`` with this command and the runs' commits.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from robustrain.reporting import pct
from robustrain.reporting.runs import as_fractions

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str]) -> None:
    print("$", shlex.join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's robustrain, also for scripts/*.py
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", help="the study's name (runs/<study>_mnist, results/studies/<study>_mnist.*)")
    p.add_argument("--recipe", required=True, help="the baseline recipe, configs/<recipe>.yaml")
    p.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDES (';'-separated key=value)")
    p.add_argument("--mnist-root", default=os.environ.get("MNIST_ROOT", "../shared/data/mnist"))
    p.add_argument("--title", default=None)
    p.add_argument("--n-ex", default="1000", help="test images of the FGSM and extra evaluations (default 1000)")
    p.add_argument("--extra-eval", action="append", default=[],
                   help="LABEL=EVAL ARGS: also evaluate each last checkpoint with these robustrain eval arguments "
                        "(e.g. 'beta50=--attack beta --steps 50 --step 0.01'); a table of them is appended")
    args = p.parse_args()
    py = sys.executable
    out = ROOT / "runs" / f"{args.study}_mnist"
    names = []
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        names.append(name)
        run_dir = out / name
        sets = [s.strip() for s in overrides.split(";") if s.strip()]
        if not (run_dir / "summary.json").is_file():
            run([py, "-m", "robustrain.cli", "train", "-c", f"configs/{args.recipe}.yaml", "--run-dir", str(run_dir),
                 "--set", f"data.root={args.mnist_root}", "--set", "train.progress=false",
                 *[a for s in sets for a in ("--set", s)]])
        run([py, "-m", "robustrain.cli", "eval", str(run_dir), "--checkpoint", "last", "--attack", "fgsm",
             "--n-ex", args.n_ex, "--data-root", args.mnist_root, "--out", str(run_dir / "eval_fgsm_last.json")])
        for extra in args.extra_eval:
            label, _, eval_args = extra.partition("=")
            run([py, "-m", "robustrain.cli", "eval", str(run_dir), "--checkpoint", "last", *shlex.split(eval_args),
                 "--n-ex", args.n_ex, "--data-root", args.mnist_root, "--no-progress",
                 "--out", str(run_dir / f"eval_{label}_last.json")])
    command = shlex.join(["python", "scripts/study_mnist.py", *sys.argv[1:]])
    result = ROOT / "results" / "studies" / f"{args.study}_mnist"
    run([py, "scripts/plot_runs.py", str(out), "--methods", *names, "--out", str(result.relative_to(ROOT)),
         "--title", args.title or f"MNIST, {args.recipe} and {args.study}", "--command", command])
    if args.extra_eval:
        with open(result.with_suffix(".md"), "a") as f:
            f.write(extra_table(out, names, args.extra_eval))


def extra_table(out: Path, names: list[str], extra: list[str]) -> str:
    """The accuracy (%) of each variant's last checkpoint under each extra evaluation. eval.json files hold
    fractions (files from before the units convention, percent, are converted by the reporting loader's rule)."""
    labels = [e.partition("=")[0] for e in extra]
    lines = ["", "## Last checkpoint under further attacks (test, robust accuracy %)", "",
             "| variant | clean | " + " | ".join(f"{lab} (`{e.partition('=')[2]}`)" for lab, e in zip(labels, extra))
             + " |", "|---" * (len(labels) + 2) + "|"]
    for name in names:
        cells, clean = [], ""
        for label in labels:
            row = read_eval(out / name / f"eval_{label}_last.json")
            clean = pct(row["clean_acc"])
            accs = {k: v for k, v in row.items() if k.endswith("_acc") and k != "clean_acc"}
            cells.append(", ".join(f"{k[:-4]} {pct(v)}" for k, v in accs.items()))
        lines.append(f"| {name} | {clean} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_eval(path: Path) -> dict:
    """A one-row eval.json with its ``*_acc`` numbers as fractions (an old file without ``units``: percent)."""
    row = json.loads(path.read_text())
    return as_fractions(row, old=row.get("units") is None)


if __name__ == "__main__":
    main()
