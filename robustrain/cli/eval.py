"""``robustrain eval``: load the target, run the plan, write report.json + report.md (and a run's eval.json)."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..evaluation.backends import BACKENDS
from ..evaluation.autoattack import COMPONENTS
from ..evaluation.pipeline import AUTOATTACK_NAMES, DEFAULT_PGD, EvalPlan, evaluate_robustness
from ..evaluation.report import write_report
from ..evaluation.sanity import untrustworthy
from ..runlock import folder_lock

DEFAULT_ATTACKS = "pgd,autoattack"
#: Exit status of ``robustrain eval`` when a sanity check fails (an error, or a sign of gradient masking)
UNTRUSTWORTHY_EXIT = 3


def add_arguments(e: argparse.ArgumentParser) -> None:
    """The options of ``robustrain eval`` beyond the original run-folder ones."""
    e.add_argument("--model", metavar="MODULE:FACTORY",
                   help="evaluate any model: a factory called without arguments (inputs in [0,1], normalisation "
                        "inside), or robustbench:NAME (a RobustBench zoo model from --model-dir); TARGET is then "
                        "omitted")
    e.add_argument("--weights", help="state dict file for --model (loaded with weights_only=True)")
    e.add_argument("--model-dir", default="./models",
                   help="for --model robustbench:NAME, robustbench's model folder (<dataset>/<Linf|L2>/NAME.pt; "
                        "default ./models, as robustbench)")
    e.add_argument("--dataset", default="cifar10", help="dataset for --model (default cifar10)")
    e.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="a reader option of the dataset (data.options; VALUE is YAML), e.g. --data-option image_size=32 "
                        "for --dataset folder; repeatable. With a run it replaces or adds to the run's data.options")
    e.add_argument("--norm", choices=["linf", "l2", "l1"], help="threat model (default: the run's, else linf)")
    e.add_argument("--version", default="standard", choices=["standard", "plus", "rand"], help="AutoAttack version")
    e.add_argument("--backend", choices=list(BACKENDS),
                   help="who runs the AutoAttack components: torchattacks (default for linf, l2) or autoattack (the "
                        "official code, PyPI pyautoattack; the default for l1) or fast (robustrain's own components with the "
                        "official per-example flags, less work on broken points; linf, l2 for APGD)")
    e.add_argument("--aa-steps", type=int, default=100, help="APGD/FAB iterations (100 is the standard; "
                                                             "anything else is reported as non-standard)")
    e.add_argument("--square-queries", type=int, default=5000, help="Square queries (5000 is the standard)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


#: (option, smallest allowed value, example) of the integer options of ``robustrain eval``
_MINIMA = (("n_ex", 1, "--n-ex 1000"), ("batch_size", 1, "--batch-size 500"), ("steps", 1, "--steps 50"),
           ("restarts", 1, "--restarts 10"), ("aa_steps", 1, "--aa-steps 100"),
           ("square_queries", 1, "--square-queries 5000"), ("seed", 0, "--seed 0"))


def check_arguments(args: argparse.Namespace) -> None:
    """The options' ranges and the device string, before anything is loaded (a 0 never silently means 'default')."""
    from ..config import check_device

    for name, low, example in _MINIMA:
        value = getattr(args, name, None)
        if value is not None and value < low:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value}: expected an integer >= {low}, e.g. {example}"
                              + (" (leave it out for the default)." if name != "seed" else "."))
    if args.device is not None:
        check_device(args.device, "--device")
    if args.attack is not None and not any(a.strip() for a in args.attack.split(",")):
        raise ConfigError(f"--attack {args.attack!r}: expected comma-separated attack names, e.g. pgd,autoattack.")


def data_options(items: list[str] | None) -> dict[str, Any]:
    """``--data-option KEY=VALUE`` (repeated) as the dict ``data.options`` would hold (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--data-option {item!r}: expected KEY=VALUE, a reader option of the dataset "
                              "(data.options), e.g. --data-option image_size=32 for --dataset folder.")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--data-option {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                              "quote it, e.g. --data-option 'key=\"a: b\"'.") from e
    return out


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

    check_arguments(args)  # before anything is loaded or joined
    dist = init_from_env(args.device or "auto")  # under torchrun: join the process group (NCCL on GPUs, else gloo)
    try:
        return _evaluate(args, dist.is_main)
    finally:
        teardown()


def _evaluate(args: argparse.Namespace, is_main: bool) -> int:
    from ..threat import check_radius, make_threat
    from .target import ROBUSTBENCH, load_factory_target, load_robustbench_target, load_run_target

    if args.model is None and args.target is None:
        raise ConfigError("robustrain eval: give a run folder or checkpoint, or --model module:factory --weights FILE.")
    if args.model is not None and args.target is not None:
        raise ConfigError(f"robustrain eval: got both a target ({args.target!r}) and --model; give one of them.")
    options = data_options(getattr(args, "data_option", None))
    names = ["clean"] + [a.strip().lower() for a in (args.attack or DEFAULT_ATTACKS).split(",") if a.strip()]
    names = list(dict.fromkeys(names))
    if args.eps is not None and not args.eps:
        raise ConfigError("--eps: no radius given; write one or several, e.g. --eps 8/255 or --eps 2/255,4/255,8/255.")
    if args.model is not None:
        if args.eps is None:
            raise ConfigError("--model needs --eps, e.g. --eps 8/255 (L∞, CIFAR-10) or --eps 0.5 (L2).")
        if args.model.startswith(ROBUSTBENCH):
            if args.split != "test" or args.weights is not None:
                raise ConfigError("--model robustbench:NAME evaluates the zoo checkpoint on the test split; drop "
                                  "--weights and --split.")
            target = load_robustbench_target(args.model[len(ROBUSTBENCH):], model_dir=args.model_dir,
                                             dataset=args.dataset, norm=args.norm or "linf", data_root=args.data_root,
                                             device=args.device, n_ex=args.n_ex, batch_size=args.batch_size or 500,
                                             data_options=options)
        else:
            target = load_factory_target(args.model, args.weights, dataset=args.dataset, split=args.split,
                                         data_root=args.data_root, device=args.device, n_ex=args.n_ex,
                                         batch_size=args.batch_size or 500, data_options=options)
    else:
        target = load_run_target(Path(args.target), checkpoint=args.checkpoint, split=args.split,
                                 data_root=args.data_root, device=args.device, n_ex=args.n_ex,
                                 batch_size=args.batch_size, eps=None if args.eps is None else max(args.eps),
                                 norm=args.norm, data_options=options)
    norm = args.norm or target.norm or "linf"
    radii = args.eps if args.eps is not None else [target.eps]
    for eps in radii:
        check_radius(eps, "--eps", norm)
    if len(set(radii)) != len(radii):
        raise ConfigError(f"--eps lists a radius twice: {radii}; give each once.")
    sections = _sections(args, target.sections, names, norm)
    plans = [EvalPlan(make_threat(norm, eps), attacks=names, sections=sections, version=args.version,
                      backend=args.backend, batch_size=args.batch_size or 500, seed=args.seed, aa_steps=args.aa_steps,
                      square_queries=args.square_queries, amp_dtype=target.amp_dtype) for eps in radii]
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
        if len(plans) > 1:
            if legacy_json:
                raise ConfigError(f"--out {args.out!r}: several radii write a folder (a report per ε and the sweep "
                                  "table); give --out DIR.")
            return _sweep_and_write(args, target, plans, out_dir, is_main)
        return _evaluate_and_write(args, target, plans[0], out_dir, legacy_json, is_main)


def _evaluate_and_write(args: argparse.Namespace, target, plan: EvalPlan, out_dir: Path, legacy_json: bool,
                        is_main: bool) -> int:
    from ..tables import format_table, pct, radius_label

    report, _ = evaluate_robustness(target.model, target.x, target.y, plan, num_classes=target.num_classes,
                                    model_info=target.model_info, data_info=target.data_info, out_dir=out_dir,
                                    progress=not args.no_progress)
    if not is_main:
        return UNTRUSTWORTHY_EXIT if untrustworthy(report["sanity"]["checks"]) else 0
    json_path, md_path = write_report(report, out_dir)
    failed = untrustworthy(report["sanity"]["checks"])
    headline = (f"NOT TRUSTWORTHY: {len(failed)} sanity check(s) failed ({', '.join(c['name'] for c in failed)}); "
                "the robust accuracy below is likely an overestimate (see report.md)." if failed else "")
    if headline:
        print(headline)
    rows = [{"stage": s["name"], "attacked": s["n_attacked"], "robust_acc (%)": pct(s["robust_acc"]),
             "seconds": f"{s['seconds']:.1f}"} for s in report["stages"]]
    print(f"{report['threat']['norm']}, eps = {radius_label(report['threat']['eps'])}; {report['n_ex']} examples")
    print(format_table(rows, list(rows[0])))
    print(f"\nworst-case robust accuracy: {pct(report['final']['robust_acc'])}% on {report['n_ex']} examples"
          + (f" (AutoAttack {args.version}, backend {report['backend']['name']})" if report["backend"] else ""))
    written = [json_path, md_path]
    if target.model_info.get("source") == "robustbench":
        written.append(write_robustbench_result(report, out_dir))
    if target.run_dir is not None:  # with --out DIR, nothing goes into the run folder: its eval.json goes to DIR
        to_dir = args.out is not None and not legacy_json
        written.append(_write_run_summary(report, target, args, out_dir / "eval.json" if to_dir else
                                          Path(args.out) if legacy_json else None, json_path, attach=not to_dir))
    print("written: " + ", ".join(map(str, written)))
    if failed:
        print(headline.replace("below", "above"), file=sys.stderr)
        for c in failed:
            print(f"  [{c['level']}] {c['name']}: {c['message']}", file=sys.stderr)
        return UNTRUSTWORTHY_EXIT
    return 0


def robustbench_result(report: dict) -> dict:
    """The evaluation as RobustBench names its results (``model_info`` fields: ``name``, ``dataset``,
    ``threat_model``, ``eps`` as 8/255, ``clean_acc``, ``autoattack_acc``), with robustrain's units (fractions)."""
    from ..tables import UNITS, format_radius

    m, acc = report["model"], report["accuracy"]
    out = {"name": m["name"], "dataset": m["dataset"], "threat_model": m["threat_model"],
           "eps": format_radius(report["threat"]["eps"]), "eps_value": report["threat"]["eps"],
           "n_ex": report["n_ex"], "clean_acc": acc["clean"]}
    if "autoattack" in acc:
        out["autoattack_acc"] = acc["autoattack"]
        out["autoattack_version"] = report["settings"][next(s["name"] for s in report["stages"]
                                                                if s["group"] == "autoattack")]["version"]
    out.update({"worst_case_acc": acc["worst_case"], "standard": report["standard"], "units": UNITS})
    return out


def write_robustbench_result(report: dict, out_dir: Path) -> Path:
    """``robustbench.json`` in ``out_dir`` (:func:`robustbench_result`)."""
    from ..atomic import write_json_atomic

    path = out_dir / "robustbench.json"
    write_json_atomic(path, robustbench_result(report))
    return path


def sweep_rows(reports: list[dict]) -> tuple[list[dict], list[str]]:
    """One row per radius (``eps``, its ``eps_label`` such as 8/255, ``n_ex``, ``clean_acc``, each attack stage's
    ``<stage>_acc``, ``autoattack_acc``, ``worst_case_acc``; fractions) and the accuracy keys in column order."""
    from ..tables import format_radius

    rows, keys = [], []
    for r in reports:
        acc = r["accuracy"]
        row = {"eps": r["threat"]["eps"], "eps_label": format_radius(r["threat"]["eps"]), "n_ex": r["n_ex"]}
        for s in r["stages"]:
            if s["group"] != "autoattack":
                row[f"{s['name']}_acc"] = s["robust_acc"]
        if "autoattack" in acc:
            row["autoattack_acc"] = acc["autoattack"]
        row["worst_case_acc"] = acc["worst_case"]
        rows.append(row)
        keys += [k for k in row if k.endswith("_acc") and k not in keys]
    return rows, keys


def _sweep_and_write(args: argparse.Namespace, target, plans: list[EvalPlan], out_dir: Path, is_main: bool) -> int:
    """Evaluate every radius into ``out_dir/eps_<ε>/`` (a full report each), then ``sweep.json`` (rows of fractions),
    ``sweep.md`` (percent) and ``sweep.png`` (robust accuracy against ε) into ``out_dir``."""
    from ..atomic import write_json_atomic
    from ..reporting import plot_sweep
    from ..tables import UNITS, format_radius, format_table, pct

    reports, errors = [], 0
    for plan in plans:
        sub = out_dir / ("eps_" + format_radius(plan.threat.eps).replace("/", "_"))
        if is_main:
            print(f"\n== eps = {format_radius(plan.threat.eps)} ({plan.threat.eps:.6g}) ==", flush=True)
        report, _ = evaluate_robustness(target.model, target.x, target.y, plan, num_classes=target.num_classes,
                                        model_info=target.model_info, data_info=target.data_info, out_dir=sub,
                                        progress=not args.no_progress)
        if is_main:
            write_report(report, sub)
        reports.append(report)
        errors += report["sanity"]["n_errors"]
    if not is_main:
        return 3 if errors else 0
    rows, keys = sweep_rows(reports)
    norm = plans[0].threat.norm
    sweep = {"threat": {"norm": norm, "eps": [p.threat.eps for p in plans]}, "attacks": reports[0]["attacks"],
             "backend": reports[0]["backend"], "n_ex": reports[0]["n_ex"], "model": reports[0]["model"],
             "data": reports[0]["data"], "units": UNITS, "rows": rows,
             "reports": [str(out_dir / ("eps_" + r["eps_label"].replace("/", "_")) / "report.json") for r in rows]}
    write_json_atomic(out_dir / "sweep.json", sweep)
    table = format_table([{"eps": r["eps_label"], **{k: pct(r.get(k)) for k in keys}} for r in rows],
                         ["eps", *keys])
    name = target.model_info.get("name") or target.model_info.get("source", "model")
    (out_dir / "sweep.md").write_text(f"# Robust accuracy (%) against ε ({norm}): {name}\n\n"
                                      f"{reports[0]['n_ex']} examples; attacks: {', '.join(reports[0]['attacks'])}"
                                      f"\n\n{table}\n")
    plot_sweep(rows, [k for k in keys if k != "clean_acc"] + ["clean_acc"], out_dir / "sweep.png",
               f"{name}: accuracy against ε ({norm}, {reports[0]['n_ex']} examples)")
    print(f"\naccuracy (%) against ε ({norm}):\n{table}")
    print("written: " + ", ".join(str(out_dir / f) for f in ("sweep.json", "sweep.md", "sweep.png"))
          + f" and a report per radius in {out_dir}/eps_*/")
    if errors:
        print(f"robustrain: {errors} sanity check(s) failed (see the reports); the numbers above are not "
              "trustworthy.", file=sys.stderr)
        return 3
    return 0


def _write_run_summary(report: dict, target, args: argparse.Namespace, path: Path | None, report_path: Path,
                       attach: bool = True) -> Path:
    """The one-row ``eval.json`` beside a run's checkpoints (the format ``robustrain eval`` always wrote), or at
    ``path``; ``attach``: also attach it to the run's wandb run (which writes into the run folder)."""
    from ..tables import UNITS, format_radius
    from ..tracking import attach_report

    acc = report["accuracy"]
    row = {"checkpoint": target.model_info["path"], "split": args.split, "n_ex": report["n_ex"],
           "clean_acc": acc["clean"]}
    first_attack = None
    for s in report["stages"]:
        if s["group"] not in ("clean", "autoattack"):
            row[f"{s['name']}_acc"] = s["robust_acc"]
            first_attack = first_attack or s["settings"]
    if "autoattack" in acc:
        row["autoattack_acc"] = acc["autoattack"]
    row["worst_case_acc"] = acc["worst_case"]
    summary = {**row, "units": UNITS, "threat": {**report["threat"], "eps_label": format_radius(report["threat"]["eps"])},
               "attack": first_attack, "seconds": report["runtime"]["per_stage"], "epoch": target.epoch,
               "seed": args.seed, "report": str(report_path)}
    out = path or target.run_dir / "eval.json"
    out.write_text(json.dumps(summary, indent=2))
    if attach:
        attach_report(target.run_dir, out)  # a tracked run gets the report in wandb
    return out
