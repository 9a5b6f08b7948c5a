"""A method against its baseline on MNIST at CPU scale: train a recipe and its variants, then the table and plot.

    python scripts/study_mnist.py dom --recipe mnist_fgsm_rs \
        --variant baseline= \
        --variant "dom_re=procedures=[{name: dom, threshold: 0.01}]"
    python scripts/study_mnist.py hr --recipe mnist_ro_small --seeds 0 1 2 --variant pgd_at= \
        --variant "hr=recipe=mnist_hr" --holistic "--n-ex 500 --noise 0.1 0.3"

Each ``--variant NAME=OVERRIDES`` trains ``configs/<recipe>.yaml`` with the overrides (``;``-separated ``key=value``
as ``--set`` takes them; empty: the recipe itself; an entry ``recipe=R`` trains ``configs/R.yaml`` instead) into
``runs/<study>_mnist/NAME`` (skipped when its summary.json exists), evaluates zero-init FGSM on its last
checkpoint, and ``scripts/plot_runs.py`` writes ``results/studies/<study>_mnist.md`` / ``.png`` with this command
and the runs' commits. With ``--seeds`` each variant runs once per seed (``runs/<study>_mnist/NAME_seedS``, ``--set
seed=S``) and ``scripts/plot_procedure_study.py`` writes ``results/studies/<study>_mnist/<study>_mnist.md`` / ``.png``
(mean ± sd over seeds). ``--extra-eval`` (robustrain eval) and ``--holistic`` (scripts/holistic_eval.py: test
noise, train-test gap) evaluate every last checkpoint again and append their tables.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from robustrain.reporting import pct
from robustrain.reporting.runs import as_fractions

ROOT = Path(__file__).resolve().parent.parent


#: robustrain eval's exit status when a sanity check failed (e.g. a collapsed model's zero gradients): its numbers
#: are written with the NOT TRUSTWORTHY headline, and the study goes on (the table shows them)
EVAL_UNTRUSTWORTHY = 3


def run(cmd: list[str], ok: tuple[int, ...] = (0,)) -> None:
    print("$", shlex.join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's robustrain, also for scripts/*.py
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    if rc not in ok:
        raise SystemExit(f"study_mnist: command failed with exit status {rc}: {shlex.join(cmd)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", help="the study's name (runs/<study>_mnist, results/studies/<study>_mnist.*)")
    p.add_argument("--recipe", required=True, help="the baseline recipe, configs/<recipe>.yaml")
    p.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDES (';'-separated key=value)")
    p.add_argument("--mnist-root", default=os.environ.get("MNIST_ROOT", "../shared/data/mnist"))
    p.add_argument("--title", default=None)
    p.add_argument("--n-ex", default="1000", help="test images of the FGSM and extra evaluations (default 1000)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train each variant once per seed (NAME_seedS); the table gives mean ± sd over seeds")
    p.add_argument("--holistic", default=None, metavar="ARGS",
                   help="also run scripts/holistic_eval.py ARGS on each last checkpoint (e.g. '--n-ex 500 --noise 0.3')")
    p.add_argument("--extra-eval", action="append", default=[],
                   help="LABEL=EVAL ARGS: also evaluate each last checkpoint with these robustrain eval arguments "
                        "(e.g. 'beta50=--attack beta --steps 50 --step 0.01'); a table of them is appended")
    args = p.parse_args()
    py = sys.executable
    out = ROOT / "runs" / f"{args.study}_mnist"
    names = []
    for spec in args.variant:
        variant, _, overrides = spec.partition("=")
        sets = [s.strip() for s in overrides.split(";") if s.strip()]
        recipe = next((s.partition("=")[2].strip() for s in sets if s.partition("=")[0].strip() == "recipe"),
                      args.recipe)
        sets = [s for s in sets if s.partition("=")[0].strip() != "recipe"]
        for seed in args.seeds if args.seeds is not None else [None]:
            name = variant if seed is None else f"{variant}_seed{seed}"
            names.append(name)
            run_dir = out / name
            seed_set = [] if seed is None else ["--set", f"seed={seed}"]
            if not (run_dir / "summary.json").is_file():
                run([py, "-m", "robustrain.cli", "train", "-c", f"configs/{recipe}.yaml", "--run-dir", str(run_dir),
                     "--set", f"data.root={args.mnist_root}", "--set", "train.progress=false", *seed_set,
                     *[a for s in sets for a in ("--set", s)]])
            evaluate(py, run_dir, args)
    command = shlex.join(["python", "scripts/study_mnist.py", *sys.argv[1:]])
    title = args.title or f"MNIST, {args.recipe} and {args.study}"
    if args.seeds is None:
        result = ROOT / "results" / "studies" / f"{args.study}_mnist"
        run([py, "scripts/plot_runs.py", str(out), "--methods", *names, "--out", str(result.relative_to(ROOT)),
             "--title", title, "--command", command])
    else:
        result = ROOT / "results" / "studies" / f"{args.study}_mnist" / f"{args.study}_mnist"
        run([py, "scripts/plot_procedure_study.py", str(out), "--runs", *names,
             "--out", str(result.relative_to(ROOT)), "--title", title, "--command", command])
    with open(result.with_suffix(".md"), "a") as f:
        if args.extra_eval:
            f.write(extra_table(out, names, args.extra_eval))
        if args.holistic is not None:
            f.write(holistic_table(out, names, args.holistic))


def evaluate(py: str, run_dir: Path, args: argparse.Namespace) -> None:
    """The FGSM, further and holistic evaluations of a run's last checkpoint (each skipped when its file exists)."""
    fgsm = run_dir / "eval_fgsm_last.json"
    if not fgsm.is_file():
        run([py, "-m", "robustrain.cli", "eval", str(run_dir), "--checkpoint", "last", "--attack", "fgsm",
             "--n-ex", args.n_ex, "--data-root", args.mnist_root, "--no-progress", "--out", str(fgsm)],
            ok=(0, EVAL_UNTRUSTWORTHY))
    for extra in args.extra_eval:
        label, _, eval_args = extra.partition("=")
        path = run_dir / f"eval_{label}_last.json"
        if not path.is_file():
            run([py, "-m", "robustrain.cli", "eval", str(run_dir), "--checkpoint", "last", *shlex.split(eval_args),
                 "--n-ex", args.n_ex, "--data-root", args.mnist_root, "--no-progress", "--out", str(path)],
                ok=(0, EVAL_UNTRUSTWORTHY))
    if args.holistic is not None and not (run_dir / "eval_holistic_last.json").is_file():
        run([py, "scripts/holistic_eval.py", str(run_dir), "--checkpoint", "last", "--data-root", args.mnist_root,
             *shlex.split(args.holistic), "--out", str(run_dir / "eval_holistic_last.json")])


def extra_table(out: Path, names: list[str], extra: list[str]) -> str:
    """The accuracy (%) of each run's last checkpoint under each extra evaluation, then each variant's mean over its
    seeds (when it has several). eval.json files hold fractions (files from before the units convention, percent,
    are converted by the reporting loader's rule)."""
    labels = [e.partition("=")[0] for e in extra]
    lines = ["", "## Last checkpoint under further attacks (test, robust accuracy %)", "",
             "| variant | clean | " + " | ".join(f"{lab} (`{e.partition('=')[2]}`)" for lab, e in zip(labels, extra))
             + " |", "|---" * (len(labels) + 2) + "|"]
    rows = {}
    for name in names:
        evals = [read_eval(out / name / f"eval_{label}_last.json") for label in labels]
        rows[name] = [{k: v for k, v in row.items() if k.endswith("_acc")} for row in evals]
    for name, evals in [*rows.items(), *seed_means(rows).items()]:
        clean = pct(evals[-1]["clean_acc"]) if evals else ""
        cells = [", ".join(f"{k[:-4]} {pct(v)}" for k, v in accs.items() if k != "clean_acc") for accs in evals]
        lines.append(f"| {name} | {clean} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


HOLISTIC_NOTE = ("clean / PGD: the first N test images; noise σ: clean accuracy on the same images plus Gaussian "
                 "noise of standard deviation σ (clipped to [0, 1]), and PGD run from the noisy images; train: the "
                 "same on the first N images the run trained on; gap = train PGD − test PGD (points)")


def holistic_table(out: Path, names: list[str], args: str) -> str:
    """scripts/holistic_eval.py's numbers (%) per run and, per variant with several seeds, their mean."""
    rows = {n: [json.loads((out / n / "eval_holistic_last.json").read_text())] for n in names}
    first = rows[names[0]][0]
    keys = [k for k in first if k.endswith("_acc") or k == "gap_pgd"]
    pgd = first["pgd"]
    lines = ["", f"## Last checkpoint: natural corruption and generalisation gap (%, `scripts/holistic_eval.py {args}`)",
             "", f"PGD-{pgd.get('steps')}-{pgd.get('restarts', 1)} (step {pgd.get('step')}) at ε = {first['eps']:g}, "
             f"{first['n_ex']} test and {first['n_train']} training images. {HOLISTIC_NOTE}.", "",
             "| run | " + " | ".join(k.removesuffix("_acc").replace("_", " ") for k in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    means = seed_means({n: [{k: r[k] for k in keys}] for n, [r] in rows.items()})
    for name, [row] in [*rows.items(), *means.items()]:
        lines.append(f"| {name} | " + " | ".join(pct(row[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def seed_means(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``{"NAME (mean of k seeds)": [mean of each dict's numbers]}`` for each variant with several NAME_seedS runs."""
    groups: dict[str, list[list[dict]]] = {}
    for name, evals in rows.items():
        groups.setdefault(name.rsplit("_seed", 1)[0], []).append(evals)
    return {f"{variant} (mean of {len(runs)} seeds)": [{k: statistics.mean(run[i][k] for run in runs) for k in d}
                                                        for i, d in enumerate(runs[0])]
            for variant, runs in groups.items() if len(runs) > 1}


def read_eval(path: Path) -> dict:
    """A one-row eval.json with its ``*_acc`` numbers as fractions (an old file without ``units``: percent)."""
    row = json.loads(path.read_text())
    return as_fractions(row, old=row.get("units") is None)


if __name__ == "__main__":
    main()
