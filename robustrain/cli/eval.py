"""``robustrain eval``: load the target, run the plan, write report.json + report.md (and a run's eval.json)."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..evaluation.backends import BACKENDS
from ..evaluation.autoattack import COMPONENTS
from ..evaluation.pipeline import AUTOATTACK_NAMES, DEFAULT_PGD, EvalPlan, evaluate_robustness
from ..evaluation.report import write_report
from ..runlock import folder_lock

DEFAULT_ATTACKS = "pgd,autoattack"


def add_arguments(e: argparse.ArgumentParser) -> None:
    """The options of ``robustrain eval`` beyond the original run-folder ones."""
    e.add_argument("--model", metavar="MODULE:FACTORY",
                   help="evaluate any model: a factory called without arguments (inputs in [0,1], normalisation "
                        "inside); TARGET is then omitted")
    e.add_argument("--weights", help="state dict file for --model (loaded with weights_only=True)")
    e.add_argument("--dataset", default="cifar10", help="dataset for --model (default cifar10)")
    e.add_argument("--norm", choices=["linf", "l2", "l1"], help="threat model (default: the run's, else linf)")
    e.add_argument("--version", default="standard", choices=["standard", "plus", "rand"], help="AutoAttack version")
    e.add_argument("--backend", choices=list(BACKENDS),
                   help="who runs the AutoAttack components: torchattacks (default for linf, l2) or autoattack (the "
                        "official code, PyPI pyautoattack; the default for l1)")
    e.add_argument("--aa-steps", type=int, default=100, help="APGD/FAB iterations (100 is the standard; "
                                                             "anything else is reported as non-standard)")
    e.add_argument("--square-queries", type=int, default=5000, help="Square queries (5000 is the standard)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _sections(args: argparse.Namespace, known: dict[str, dict], names: list[str], norm: str) -> dict[str, dict]:
    from ..attacks import ATTACKS
    from ..config import check_attack_section

    out = {}
    for name in names:
        if name == "clean" or name in AUTOATTACK_NAMES or name in COMPONENTS:
            continue
        if name not in known and name not in ATTACKS:
            from ..errors import did_you_mean

            raise ConfigError(f"--attack {name!r} is not an attack; expected a comma-separated list of autoattack (the "
                              f"cascade), AutoAttack components ({', '.join(COMPONENTS)}) and robustrain attacks "
                              f"({', '.join(sorted(ATTACKS))})."
                              + did_you_mean(name, [*AUTOATTACK_NAMES, *COMPONENTS, *ATTACKS]))
        section = dict(known.get(name) or (DEFAULT_PGD if name == "pgd" else {"name": name}))
        for key in ("steps", "restarts", "step"):
            value = getattr(args, key)
            if value is not None:
                section[key] = value
        check_attack_section(section, "--attack", norm)
        out[name] = section
    return out


def eval_command(args: argparse.Namespace) -> int:
    """``robustrain eval``; under ``torchrun`` every rank evaluates its share of each stage's batches (the report is
    that of one process) and rank 0 alone writes and prints."""
    from ..distributed import init_from_env, teardown

    dist = init_from_env(args.device or "auto")  # under torchrun: join the process group (NCCL on GPUs, else gloo)
    try:
        return _evaluate(args, dist.is_main)
    finally:
        teardown()


def _evaluate(args: argparse.Namespace, is_main: bool) -> int:
    from ..threat import check_radius, make_threat
    from .target import load_factory_target, load_run_target

    if args.model is None and args.target is None:
        raise ConfigError("robustrain eval: give a run folder or checkpoint, or --model module:factory --weights FILE.")
    if args.model is not None and args.target is not None:
        raise ConfigError(f"robustrain eval: got both a target ({args.target!r}) and --model; give one of them.")
    names = ["clean"] + [a.strip().lower() for a in (args.attack or DEFAULT_ATTACKS).split(",") if a.strip()]
    names = list(dict.fromkeys(names))
    if args.model is not None:
        if args.eps is None:
            raise ConfigError("--model needs --eps, e.g. --eps 8/255 (L∞, CIFAR-10) or --eps 0.5 (L2).")
        target = load_factory_target(args.model, args.weights, dataset=args.dataset, split=args.split,
                                     data_root=args.data_root, device=args.device, n_ex=args.n_ex,
                                     batch_size=args.batch_size or 500)
    else:
        target = load_run_target(Path(args.target), checkpoint=args.checkpoint, split=args.split,
                                 data_root=args.data_root, device=args.device, n_ex=args.n_ex,
                                 batch_size=args.batch_size, eps=args.eps, norm=args.norm)
    norm = args.norm or target.norm or "linf"
    eps = args.eps if args.eps is not None else target.eps
    check_radius(eps, "--eps", norm)
    plan = EvalPlan(make_threat(norm, eps), attacks=names, sections=_sections(args, target.sections, names, norm),
                    version=args.version, backend=args.backend, batch_size=args.batch_size or 500, seed=args.seed,
                    aa_steps=args.aa_steps, square_queries=args.square_queries, amp_dtype=target.amp_dtype)
    legacy_json = args.out is not None and args.out.endswith(".json")
    if args.out is not None and not legacy_json:
        out_dir = Path(args.out)
    elif target.run_dir is not None:
        out_dir = target.run_dir / "eval"
    else:
        out_dir = Path("eval")
    # one writer at a time: the run folder when the results go into it, else the --out folder
    locked = target.run_dir if target.run_dir is not None and (args.out is None or legacy_json) else out_dir
    lock = folder_lock(locked, getattr(args, "command_line", None)) if is_main else contextlib.nullcontext()
    with lock:
        return _evaluate_and_write(args, target, plan, out_dir, legacy_json, is_main)


def _evaluate_and_write(args: argparse.Namespace, target, plan: EvalPlan, out_dir: Path, legacy_json: bool,
                        is_main: bool) -> int:
    from ..tables import format_table

    report, _ = evaluate_robustness(target.model, target.x, target.y, plan, num_classes=target.num_classes,
                                    model_info=target.model_info, data_info=target.data_info, out_dir=out_dir,
                                    progress=not args.no_progress)
    if not is_main:
        return 3 if report["sanity"]["n_errors"] else 0
    json_path, md_path = write_report(report, out_dir)
    rows = [{"stage": s["name"], "attacked": s["n_attacked"], "robust_acc (%)": f"{100 * s['robust_acc']:.2f}",
             "seconds": f"{s['seconds']:.1f}"} for s in report["stages"]]
    print(format_table(rows, list(rows[0])))
    print(f"\nworst-case robust accuracy: {100 * report['final']['robust_acc']:.2f}% on {report['n_ex']} examples"
          + (f" (AutoAttack {args.version}, backend {report['backend']['name']})" if report["backend"] else ""))
    written = [json_path, md_path]
    if target.run_dir is not None:  # with --out DIR, nothing goes into the run folder: its eval.json goes to DIR
        to_dir = args.out is not None and not legacy_json
        written.append(_write_run_summary(report, target, args, out_dir / "eval.json" if to_dir else
                                          Path(args.out) if legacy_json else None, json_path, attach=not to_dir))
    print("written: " + ", ".join(map(str, written)))
    s = report["sanity"]
    if s["n_errors"]:
        print(f"robustrain: {s['n_errors']} sanity check(s) failed (see report.md); the number above is not "
              "trustworthy.", file=sys.stderr)
        return 3
    return 0


def _write_run_summary(report: dict, target, args: argparse.Namespace, path: Path | None, report_path: Path,
                       attach: bool = True) -> Path:
    """The one-row ``eval.json`` beside a run's checkpoints (the format ``robustrain eval`` always wrote), or at
    ``path``; ``attach``: also attach it to the run's wandb run (which writes into the run folder)."""
    from ..tracking import attach_report

    acc = report["accuracy"]
    row = {"checkpoint": target.model_info["path"], "split": args.split, "n_ex": report["n_ex"],
           "clean_acc": round(100 * acc["clean"], 2)}
    first_attack = None
    for s in report["stages"]:
        if s["group"] not in ("clean", "autoattack"):
            row[f"{s['name']}_acc"] = round(100 * s["robust_acc"], 2)
            first_attack = first_attack or s["settings"]
    if "autoattack" in acc:
        row["autoattack_acc"] = round(100 * acc["autoattack"], 2)
    row["worst_case_acc"] = round(100 * acc["worst_case"], 2)
    summary = {**row, "threat": report["threat"], "attack": first_attack, "seconds": report["runtime"]["per_stage"],
               "epoch": target.epoch, "seed": args.seed, "report": str(report_path)}
    out = path or target.run_dir / "eval.json"
    out.write_text(json.dumps(summary, indent=2))
    if attach:
        attach_report(target.run_dir, out)  # a tracked run gets the report in wandb
    return out
