"""The ``robustrain`` command: ``train`` a recipe into a run folder, ``eval`` a run or checkpoint, ``report`` runs,
list the bundled ``recipes``."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..errors import RobustrainError


def _train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..distributed import init_from_env, teardown
    from ..run import run_training

    cfg = load_config(args.config, args.set or [])
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.out_dir) / cfg.name
    dist = init_from_env(cfg.data.device)  # under torchrun: join the process group (NCCL on GPUs, else gloo)
    try:
        if dist.is_main:
            print(f"run folder: {run_dir}" + (f" ({dist.world_size} processes, {dist.backend})" if dist.enabled else ""),
                  flush=True)
        summary = run_training(cfg, run_dir, resume=args.resume, command=args.command_line)
    finally:
        teardown()
    if dist.is_main:
        print(f"\n{cfg.name}: test accuracy (%) after {summary['train_seconds']} s of training\n")
        print(summary["table"])
        print(f"\nwritten: {run_dir}/summary.json, metrics.jsonl, best.pt, last.pt", flush=True)
        if summary.get("wandb_sync"):
            print(f"wandb (offline): upload this run with  {summary['wandb_sync']}", flush=True)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .eval import eval_command

    return eval_command(args)


def _report(args: argparse.Namespace) -> int:
    from ..reporting import write_report

    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    if args.out is None and len(args.runs) > 1:
        raise RobustrainError("several run folders need --out DIR (where the plots and report.md go).")
    from ..runlock import folder_lock

    command = "robustrain report " + " ".join(args.runs) + (f" --out {args.out}" if args.out else "")
    with folder_lock(out, command):
        written = write_report(args.runs, out, title=args.title, command=command)
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from ..config import RECIPES_DIR, recipe_summaries

    summaries = recipe_summaries()
    width = max(map(len, summaries), default=0)
    for name, line in summaries.items():
        print(f"{name:<{width}}  {line}")
    print(f"\n{len(summaries)} recipes in {RECIPES_DIR}; train one with  robustrain train -c NAME [--set key=value ...]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robustrain", description="Adversarial training that tells the truth about robustness.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe into a run folder")
    t.add_argument("-c", "--config", required=True,
                   help="a bundled recipe by name (robustrain recipes lists them), e.g. quickstart_digits, or a YAML file")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set train.epochs=3 (repeatable)")
    t.add_argument("--run-dir", help="run folder (default OUT_DIR/NAME from the config)")
    t.add_argument("--resume", action="store_true", help="continue the run in the run folder from last.pt")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="evaluate a run folder, a checkpoint or a module:factory model (clean, PGD, "
                                    "AutoAttack) into report.json + report.md")
    e.add_argument("target", nargs="?", help="run folder or checkpoint file (or use --model)")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint of a run folder")
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("--attack", help="comma-separated: pgd (the run's eval.attack, else PGD-50-10), autoattack, or "
                                    "another attack name; clean always runs (default: pgd,autoattack)")
    e.add_argument("--steps", type=int)
    e.add_argument("--restarts", type=int)
    e.add_argument("--step", type=str, help="step size, e.g. 2/255")
    e.add_argument("--eps", type=str, help="radius (default: the training radius), e.g. 8/255; several, comma-separated "
                                          "(2/255,4/255,8/255), evaluate each and write a robustness-vs-ε table and plot")
    e.add_argument("--n-ex", type=int, help="number of test examples (default: all)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--data-root", help="where the dataset files are, if not where training found them")
    e.add_argument("--device")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", help="folder for report.json and report.md (default: RUN/eval, or ./eval for --model); "
                                 "a run's one-row eval.json goes there too and nothing into the run folder; a path ending "
                                 "in .json is where a run's one-row eval.json goes instead")
    from .eval import add_arguments

    add_arguments(e)
    e.set_defaults(func=_eval)
    rc = sub.add_parser("recipes", help="list the bundled recipes (one line each)")
    rc.set_defaults(func=_recipes)
    r = sub.add_parser("report", help="plots and a markdown summary of run folders (no network needed)")
    r.add_argument("runs", nargs="+", help="run folders (several: compared on the same plots)")
    r.add_argument("--out", help="output folder (default RUN_DIR/report for one run)")
    r.add_argument("--title", help="plot and report title (default: the run names)")
    r.set_defaults(func=_report)
    return p


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks run (locks released, files intact)."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = "robustrain " + " ".join(sys.argv[1:] if argv is None else argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if getattr(args, "eps", None) is not None:
            from ..config import parse_number

            args.eps = [parse_number(e.strip(), "--eps") for e in str(args.eps).split(",") if e.strip()]
        return args.func(args)
    except RobustrainError as e:
        print(f"robustrain: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused: say which file and why, not a traceback
        where = f" {e.filename!r}" if e.filename else ""
        print(f"robustrain: error: cannot access{where}: {e.strerror or e}. Check that the path exists and that you "
              "may read and write it (permissions, free space), or choose another path.", file=sys.stderr)
        return 2
    except Terminated:
        print("robustrain: terminated (SIGTERM); files already written are intact and the folder's lock is released.",
              file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        if args.command == "eval":
            print("robustrain: interrupted; progress is saved after every batch: rerun the same command to continue.",
                  file=sys.stderr)
            return 130
        print("robustrain: interrupted; checkpoints already written are intact (resume with --resume).", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
