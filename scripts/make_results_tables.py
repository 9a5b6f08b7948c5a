#!/usr/bin/env python3
"""Results tables from run folders, never typed by hand: runs grouped by dataset, training composition and ε,
test and validation accuracy as mean ± std over their seeds, plus one row per run.

    python scripts/make_results_tables.py RUN_DIR [RUN_DIR ...] --out results/NAME.md \
        --title "..." --command "the command that produced the runs"

Reads metrics.jsonl, config.yaml and summary.json of each run folder (robustrain.reporting). The file states the
command, the commit of this checkout, the machine and the date, as results/README.md asks.
"""
from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

from robustrain.provenance import git_commit
from robustrain.reporting import load_runs, run_table, seed_table


def commit() -> str:
    return git_commit(short=True, dirty_suffix="", cwd=Path(__file__).resolve().parent) or "unknown"


def tables(folders: list[str], title: str, command: str, machine: str) -> str:
    runs = load_runs(folders)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return "\n".join([
        f"# {title}", "",
        f"- runs: `{command}`",
        f"- tables: `python scripts/make_results_tables.py {' '.join(folders)}` at commit {commit()}, {today}",
        f"- machine: {machine}", "",
        "Accuracy in %; test numbers from each run's summary.json (`best` = highest validation PGD accuracy on the "
        "held-out split, `last` = final model); mean ± sample standard deviation over the seeds listed.", "",
        "## Mean over seeds", "", seed_table(runs), "",
        "## Every run", "", run_table(runs), "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    p.add_argument("--title", default="Results")
    p.add_argument("--command", default="(not given)", help="the command that produced the runs")
    p.add_argument("--machine", default=f"{platform.machine()} {platform.system()}, see each run's environment.json")
    args = p.parse_args()
    text = tables(args.runs, args.title, args.command, args.machine)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written: {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
