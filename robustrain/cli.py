"""The ``robustrain`` command: ``train`` a recipe into a run folder, ``eval`` a run or checkpoint."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import RobustrainError


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .experiment import run_training

    cfg = load_config(args.config, args.set or [])
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.out_dir) / cfg.name
    print(f"run folder: {run_dir}", flush=True)
    summary = run_training(cfg, run_dir, resume=args.resume)
    print(f"\n{cfg.name}: test accuracy (%) after {summary['train_seconds']} s of training\n")
    print(summary["table"])
    print(f"\nwritten: {run_dir}/summary.json, metrics.jsonl, best.pt, last.pt", flush=True)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .config import check_attack_section, from_dict, validate
    from .experiment import (AMP, attack_label, build_attack_from, build_data, build_model, evaluate_model,
                             format_table, resolve_device)
    from .threat import make_threat
    from .training.checkpoint import load_checkpoint

    target = Path(args.target)
    path = target / f"{args.checkpoint}.pt" if target.is_dir() else target
    ckpt = load_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    if args.data_root is not None:
        cfg.data.root = args.data_root
    cfg.data.device = args.device or cfg.data.device
    cfg.eval.batch_size = args.batch_size or cfg.eval.batch_size
    section = dict(cfg.eval.attack)
    if args.attack is not None:
        section = {"name": args.attack}
    for key in ("steps", "restarts", "step"):
        value = getattr(args, key)
        if value is not None:
            section[key] = value
    if args.eps is not None:
        cfg.threat.eps = args.eps
        validate(cfg)
    check_attack_section(section, "--attack", cfg.threat.norm)
    threat = make_threat(cfg.threat.norm, cfg.threat.eps)
    device = resolve_device(cfg.data.device)
    data = build_data(cfg)
    model = build_model(cfg, data.info, device)
    model.load_state_dict(ckpt["model"])
    attack = build_attack_from(section, threat, default_bn="eval", force_eval=True, amp_dtype=AMP[cfg.train.amp])
    label = attack_label(section, threat)
    loader = data.test if args.split == "test" else data.val
    if loader is None:
        raise RobustrainError("this run has no validation split (data.val_size: 0); use --split test.")
    res = evaluate_model(model, loader, attack, label, seed=args.seed, n_ex=args.n_ex, amp_dtype=AMP[cfg.train.amp])
    acc = res.accuracy()
    row = {"checkpoint": str(path), "split": args.split, "n_ex": res.n, "clean_acc": round(100 * acc["clean"], 2),
           f"{label}_acc": round(100 * acc[label], 2)}
    report = {**row, "threat": {"norm": threat.norm, "eps": threat.eps}, "attack": {**section, "step": getattr(attack, "step", None)},
              "seconds": res.seconds, "epoch": ckpt["trainer"]["epoch"], "seed": args.seed}
    out = Path(args.out) if args.out else (target if target.is_dir() else target.parent) / "eval.json"
    out.write_text(json.dumps(report, indent=2))
    print(format_table([row], list(row)))
    print(f"\nwritten: {out}")
    from .tracking import attach_report

    attach_report(target if target.is_dir() else target.parent, out)  # a tracked run gets the report in wandb
    return 0


def _report(args: argparse.Namespace) -> int:
    from .reporting import write_report

    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    if args.out is None and len(args.runs) > 1:
        raise RobustrainError("several run folders need --out DIR (where the plots and report.md go).")
    command = "robustrain report " + " ".join(args.runs) + (f" --out {args.out}" if args.out else "")
    written = write_report(args.runs, out, title=args.title, command=command)
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robustrain", description="Adversarial training that tells the truth about robustness.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe into a run folder")
    t.add_argument("-c", "--config", required=True, help="YAML recipe, e.g. configs/quickstart_digits.yaml")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set train.epochs=3 (repeatable)")
    t.add_argument("--run-dir", help="run folder (default OUT_DIR/NAME from the config)")
    t.add_argument("--resume", action="store_true", help="continue the run in the run folder from last.pt")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="evaluate a run folder or a checkpoint (clean and PGD)")
    e.add_argument("target", help="run folder or checkpoint file")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint of a run folder")
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("--attack", help="attack name (default: the config's eval.attack, PGD-50-10)")
    e.add_argument("--steps", type=int)
    e.add_argument("--restarts", type=int)
    e.add_argument("--step", type=str, help="step size, e.g. 2/255")
    e.add_argument("--eps", type=str, help="radius (default: the training radius), e.g. 8/255")
    e.add_argument("--n-ex", type=int, help="number of test examples (default: all)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--data-root", help="where the dataset files are, if not where training found them")
    e.add_argument("--device")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", help="report path (default: eval.json beside the checkpoint)")
    e.set_defaults(func=_eval)
    r = sub.add_parser("report", help="plots and a markdown summary of run folders (no network needed)")
    r.add_argument("runs", nargs="+", help="run folders (several: compared on the same plots)")
    r.add_argument("--out", help="output folder (default RUN_DIR/report for one run)")
    r.add_argument("--title", help="plot and report title (default: the run names)")
    r.set_defaults(func=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "eps", None) is not None:
            from .config import parse_number

            args.eps = parse_number(args.eps, "--eps")
        return args.func(args)
    except RobustrainError as e:
        print(f"robustrain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustrain: interrupted; checkpoints already written are intact (resume with --resume).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
