"""Running: the run folder, training (or resuming) a run, and the final evaluation of its checkpoints.

Public API:

* :func:`run_training`: train (or resume) the run in a run folder, then evaluate best and last on the test split.
* :func:`check_resume_config`: refuse a ``--resume`` whose config would change the run's training.
* :func:`prepare_run_dir`: create the run folder (``config.yaml``, ``environment.json``); refuse to overwrite.
* :func:`final_evaluation`: the test accuracy of ``best.pt`` and ``last.pt`` (their ``eval_model``, the averaged
  weights, where weight averaging provides one), into ``summary.json`` / ``.md``.
* :func:`evaluate_model`: ``evaluate`` on the first ``n_ex`` examples of a loader (sharded when distributed).
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from .attacks import Attack
from .attacks.sections import build_attack_from
from .build import AMP, Data, build_trainer
from .config import Config, dump_yaml, to_dict
from .data import BatchLoader
from .distributed import barrier, current
from .errors import ConfigError
from .evaluation import EvalResult, evaluate
from .atomic import remove_temporaries
from .provenance import environment, git_commit
from .runlock import folder_lock
from .tables import UNITS, format_radius, format_table, pct
from .threat import make_threat
from .tracking import WandbLogger
from .training import Trainer
from .training.checkpoint import check_resumable, load_checkpoint


#: Config keys a resume may change: they do not change the trained model (a key ending in ``.*`` covers its section).
RESUME_MAY_CHANGE = ("name", "out_dir", "train.progress", "train.log_every", "train.checkpoint_every", "data.root",
                     "data.download", "data.workers", "wandb.*", "eval.*")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and (data or not prefix):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}." if prefix or k else str(k)) if isinstance(v, dict) and v
                       else {f"{prefix}{k}": v})
        return out
    return {prefix.rstrip("."): data}


def _may_change(key: str) -> bool:
    return any(key == a or (a.endswith(".*") and key.startswith(a[:-1])) for a in RESUME_MAY_CHANGE)


_ABSENT = object()


def config_changes(old: dict, new: Config) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every dotted config key whose value differs between the stored config ``old`` and
    ``new`` (a key the stored config lacks counts only when ``new`` sets it to something other than the default)."""
    a, b = _flatten(old), _flatten(to_dict(new))
    default = _flatten(to_dict(Config()))
    changes = {}
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va is _ABSENT and default.get(key, _ABSENT) == vb:
            continue  # a key added to robustrain after the run was started, at its default
        if va != vb:
            changes[key] = (va, vb)
    return changes


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def check_resume_config(cfg: Config, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Before anything is written: compare ``cfg`` with the config stored in ``run_dir/last.pt``.

    A resume may change only the keys of :data:`RESUME_MAY_CHANGE`, which do not change the trained model:
    ``name``, ``out_dir``, ``train.progress``, ``train.log_every``, ``train.checkpoint_every``, ``data.root``,
    ``data.download``, ``data.workers``, every ``wandb.*`` and every ``eval.*`` key (the final test evaluation), and ``train.epochs``
    when it grows (the run is extended; the schedule is then the one of the new length). Any other difference is a
    :class:`~robustrain.errors.ConfigError` listing each key with its old and new value. Returns the allowed
    changes (recorded by :func:`prepare_run_dir` in the resume's environment file)."""
    ckpt_path = run_dir / "last.pt"
    if not ckpt_path.exists():
        raise ConfigError(f"--resume: {str(ckpt_path)!r} does not exist; nothing to resume in {str(run_dir)!r}.")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    check_resumable(ckpt, ckpt_path)  # a weights-only or optimiser-less file fails here, before any write
    stored = ckpt.get("config") or {}
    if not stored:
        return {}  # a checkpoint written without its config: nothing to compare with
    changes = config_changes(stored, cfg)
    refused = {k: v for k, v in changes.items() if not _may_change(k)}
    epochs = refused.get("train.epochs")
    if epochs is not None and isinstance(epochs[0], int) and isinstance(epochs[1], int) and epochs[1] > epochs[0]:
        del refused["train.epochs"]
    if refused:
        lines = "\n".join(f"  {k}: {_show(o)} -> {_show(n)}" for k, (o, n) in refused.items())
        raise ConfigError(
            f"--resume: the config differs from the one the run in {str(run_dir)!r} was trained with, in keys that "
            f"change training (old -> new):\n{lines}\nNothing was written. To train this config, start a new run "
            f"folder (--run-dir NEW_DIR or --set name=NEW_NAME); to continue this run, resume it with its own config: "
            f"robustrain train -c {str(run_dir / 'config.yaml')} --run-dir {str(run_dir)} --resume. A resume may "
            f"change only {', '.join(RESUME_MAY_CHANGE)} and raise train.epochs.")
    return changes


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool,
                    config_changes: dict[str, tuple[Any, Any]] | None = None) -> None:
    """Create the run folder; refuse to write over an earlier run unless resuming it."""
    if run_dir.exists() and any(run_dir.glob("*.pt")) and not resume:
        raise ConfigError(
            f"run folder {str(run_dir)!r} already holds checkpoints; resume it with --resume, or choose another "
            f"folder with --run-dir or --set name=NEW_NAME. Nothing was overwritten."
        )
    if current().is_main:  # distributed: rank 0 writes the run folder, the others wait for it
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        env_path = run_dir / ("environment.json" if not resume else f"environment.resume-{int(time.time())}.json")
        record = {**environment(), "world_size": current().world_size}
        if resume:  # the allowed config changes of this resume, old and new
            record["config_changes"] = {k: [None if o is _ABSENT else o, None if n is _ABSENT else n]
                                        for k, (o, n) in (config_changes or {}).items()}
        env_path.write_text(json.dumps(record, indent=2, default=str))
        for tmp in remove_temporaries(run_dir):  # under the run folder's lock: no other writer
            print(f"[robustrain] removed {tmp.name}, a file half-written when an earlier process in this folder was "
                  "killed (the complete files are intact)")
    barrier()


def evaluate_model(model: torch.nn.Module, loader: BatchLoader, attack: Attack, label: str, *, seed: int,
                   n_ex: int | None = None, amp_dtype: torch.dtype | None = None,
                   distributed: bool | None = None, progress: str | None = None) -> EvalResult:
    """``evaluate`` on the first ``n_ex`` examples of ``loader``; ``distributed`` (default: in a process group)
    shards every batch over the ranks and gathers the per-example results on every rank."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    max_batches = None if n_ex is None else -(-n_ex // loader.batch_size)
    n_total = len(loader.dataset) if n_ex is None else min(n_ex, len(loader.dataset))
    res = evaluate(model, loader.iterate(0), {label: attack}, generator=gen, amp_dtype=amp_dtype,
                   max_batches=max_batches, distributed=current().enabled if distributed is None else distributed,
                   progress=progress, total=n_total)
    if n_ex is not None:
        res.correct = {k: v[:n_ex] for k, v in res.correct.items()}
    return res


def final_evaluation(cfg: Config, run_dir: Path, trainer: Trainer, data: Data, train_seconds: float) -> dict[str, Any]:
    """Evaluate the best (validation-chosen) and last checkpoints on the test split; write summary.json."""
    threat = make_threat(cfg.threat.norm, cfg.threat.eps)
    amp = AMP[cfg.train.amp]
    attack = build_attack_from(cfg.eval.attack, threat, default_bn="eval", force_eval=True, amp_dtype=amp)
    label = attack.label
    averaged = any(getattr(p, "provides_eval_model", False) for p in trainer.procedures)
    rows = []
    for which in ("best", "last"):
        path = run_dir / f"{which}.pt"
        if not path.exists():
            continue
        ckpt = load_checkpoint(path, map_location=trainer.device)
        trainer.model.load_state_dict(ckpt.get("eval_model", ckpt["model"]))  # the averaged weights, if averaging
        t0 = time.perf_counter()
        res = evaluate_model(trainer.model, data.test, attack, label, seed=cfg.seed, n_ex=cfg.eval.n_ex, amp_dtype=amp,
                             progress=f"test {which}.pt" if cfg.train.progress else None)
        acc = res.accuracy()
        rows.append({"checkpoint": which, **({"weights": ckpt.get("eval_weights") or "training"} if averaged else {}),
                     "epoch": ckpt["trainer"]["epoch"], "n_ex": res.n,
                     "clean_acc": acc["clean"], f"{label}_acc": acc[label],
                     "seconds": round(time.perf_counter() - t0, 1)})
    summary = {
        "name": cfg.name, "dataset": cfg.data.name, "model": cfg.model.name, "attack": cfg.attack["name"],
        "threat": {"norm": cfg.threat.norm, "eps": cfg.threat.eps, "eps_label": format_radius(cfg.threat.eps)}, "eval_attack": {**cfg.eval.attack, "step": attack.step if hasattr(attack, "step") else None},
        "selection": (f"best.pt maximises {cfg.validation.select_on} on the held-out validation split"
                      if data.val is not None else "no validation split (data.val_size: 0): no best.pt, last.pt only"),
        "units": UNITS, "test": rows, "train_seconds": round(train_seconds, 1), "history": trainer.history,
        "git_commit": git_commit(), "world_size": current().world_size,
    }
    shown = [{**r, "clean_acc": pct(r["clean_acc"]), f"{label}_acc": pct(r[f"{label}_acc"])} for r in rows]
    table = format_table(shown, ["checkpoint", *(["weights"] if averaged else []), "epoch", "n_ex", "clean_acc",
                                 f"{label}_acc", "seconds"])
    if current().is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        (run_dir / "summary.md").write_text(f"# {cfg.name}: test accuracy (%)\n\n{table}\n")
    summary["table"] = table
    return summary


def run_training(cfg: Config, run_dir: Path, *, resume: bool = False, command: str | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``, then evaluate best and last on the test split.

    Nothing is written before the config is validated and the data and model are built; the run folder is locked
    (:mod:`robustrain.runlock`, ``command`` goes into the lock record) from before the resume check until the end."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {str(run_dir)!r} is a file; choose a folder with --run-dir (or move the file).")
    if resume and not (run_dir / "last.pt").exists():
        raise ConfigError(f"--resume: {str(run_dir / 'last.pt')!r} does not exist; nothing to resume in "
                          f"{str(run_dir)!r} (start the run without --resume).")
    trainer, data = build_trainer(cfg, run_dir)  # data and model first: a bad input fails before any write
    lock = folder_lock(run_dir, command) if current().is_main else contextlib.nullcontext()
    with lock:
        changes = check_resume_config(cfg, run_dir) if resume else None  # under the lock, before any write
        prepare_run_dir(cfg, run_dir, resume, changes)
        return _fit_and_evaluate(cfg, run_dir, trainer, data, resume)


def _fit_and_evaluate(cfg: Config, run_dir: Path, trainer: Trainer, data: Data, resume: bool) -> dict[str, Any]:
    ckpt = run_dir / "last.pt" if resume else None
    tracker = next((cb for cb in trainer.callbacks if isinstance(cb, WandbLogger)), None)
    if tracker is not None:
        tracker.finish_at_fit_end = False  # finished below, with the test results
    t0 = time.perf_counter()
    try:
        trainer.fit(resume=ckpt)
        summary = final_evaluation(cfg, run_dir, trainer, data, time.perf_counter() - t0)
    except BaseException:
        if tracker is not None:
            tracker.finish(exit_code=1)
        raise
    if tracker is not None:
        sync = tracker.finish(summary, announce=False)
        if sync:
            summary["wandb_sync"] = sync  # the CLI prints it last
    return summary


__all__ = ["RESUME_MAY_CHANGE", "check_resume_config", "config_changes", "evaluate_model", "final_evaluation", "prepare_run_dir", "run_training"]
