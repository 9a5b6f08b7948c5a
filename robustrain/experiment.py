"""From a validated :class:`Config` to data, model, attacks and the Trainer; the run folder; the final
evaluation. The CLI is a thin layer over these functions."""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .attacks import Attack, build_attack
from .config import Config, dump_yaml, to_dict
from .data import ArrayDataset, BatchLoader, load_dataset, split_validation
from .data.loader import derive_seed
from .distributed import barrier, current, device_for
from .errors import ConfigError
from .evaluation import EvalResult, evaluate
from .models import create_model
from .regularisers import build_regulariser
from .threat import ThreatModel, make_threat
from .training import Checkpointer, JSONLLogger, LRSchedule, ProgressBar, Trainer
from .training.monitor import OverfitMonitor
from .training.checkpoint import remove_stale_temporaries
from .perturbation import build_weight_perturbation
from .training.objectives import build_objective
from .training.monitor_rules import build_rule
from .training.overfitting import COThresholds, co_rules
from .tables import format_table  # noqa: F401  (re-exported: the CLI and evaluation reports import it from here)
from .tracking import WandbLogger

AMP = {None: None, "bf16": torch.bfloat16}


@dataclass
class Data:
    train: BatchLoader
    val: BatchLoader | None
    test: BatchLoader
    info: ArrayDataset  # the training set (num_classes, mean, std, shape)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA if available, else CPU; in a torchrun process group ``cuda`` means this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return device_for(torch.device(name))


def build_data(cfg: Config, *, need_train: bool = True) -> Data:
    d = cfg.data
    device = resolve_device(d.device)
    full = load_dataset(d.name, d.root, "train", download=d.download)
    test = load_dataset(d.name, d.root, "test", download=d.download)
    if d.val_size > 0:
        train, val = split_validation(full, d.val_size, seed=cfg.seed)
    else:
        train, val = full, None
    if d.train_subset is not None:
        if not 0 < d.train_subset <= len(train):
            raise ConfigError(f"data.train_subset = {d.train_subset}; expected 1..{len(train)} (the training set after the validation split).")
        train = train.subset(torch.arange(d.train_subset))
    dist = current()  # distributed: each rank loads its shard of every global batch of d.batch_size
    train_loader = BatchLoader(train, d.batch_size, shuffle=True, drop_last=False, augment=d.augment,
                               seed=cfg.seed, device=device, rank=dist.rank, world_size=dist.world_size)
    val_loader = BatchLoader(val, d.eval_batch_size, shuffle=False, device=device) if val is not None else None
    test_loader = BatchLoader(test, cfg.eval.batch_size, shuffle=False, device=device)
    return Data(train_loader, val_loader, test_loader, full)


def build_model(cfg: Config, info: ArrayDataset, device: torch.device) -> torch.nn.Module:
    model = create_model(cfg.model.name, num_classes=info.num_classes, in_channels=info.image_shape[0],
                         mean=info.mean, std=info.std, normalise=cfg.model.normalise,
                         channels_last=cfg.model.channels_last, **cfg.model.kwargs)
    if cfg.train.sync_batchnorm and current().enabled:
        if device.type != "cuda":
            raise ConfigError(
                "train.sync_batchnorm: PyTorch's SyncBatchNorm runs on GPUs only, and this distributed run is on "
                f"{device.type}; set train.sync_batchnorm=false (each rank then normalises with its shard's "
                "statistics) or train on GPUs."
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


def build_attack_from(section: dict, threat: ThreatModel, *, default_bn: str, force_eval: bool = False,
                      amp_dtype: torch.dtype | None = None) -> Attack:
    kwargs = {k: v for k, v in section.items() if k != "name"}
    if force_eval:
        if kwargs.get("bn_mode", "eval") != "eval":
            raise ConfigError("evaluation and validation attacks run the model in eval mode; remove bn_mode: train.")
        kwargs["bn_mode"] = "eval"
    else:
        kwargs.setdefault("bn_mode", default_bn)
    return build_attack(section["name"], threat, amp_dtype=amp_dtype, **kwargs)


def first_examples(loader: BatchLoader, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of a loader's epoch 0 (a fixed batch)."""
    xs, ys, have = [], [], 0
    for x, y in loader.iterate(0):
        xs.append(x)
        ys.append(y)
        have += len(y)
        if have >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def build_monitor(cfg: Config, data: Data, threat: ThreatModel) -> OverfitMonitor:
    m = cfg.monitor
    if data.val is None:
        raise ConfigError("monitor.enabled needs a held-out validation split: set data.val_size.")
    x, y = first_examples(data.val, m.n_check)
    if m.rules is not None:
        rules = [build_rule(spec, false_alarm=m.false_alarm) for spec in m.rules]
    else:
        window = m.ro_window or max(2, min(10, cfg.train.epochs // 20))
        rules = [*co_rules(COThresholds(m.co_drop, m.co_stable, m.co_gap), m.false_alarm, healthy_gap=m.co_healthy_gap),
                 build_rule({"name": "robust_overfitting", "window": window, "patience": m.ro_patience,
                             "margin": m.ro_margin, "after_decay": m.ro_after_decay, "false_alarm": m.false_alarm})]
    return OverfitMonitor(x, y, threat, every=m.every, pgd_steps=m.pgd_steps, train_batch=m.train_batch, rules=rules,
                          n_val=len(data.val.dataset), action=m.action, remedy=m.remedy, max_rollbacks=m.max_rollbacks,
                          seed=cfg.seed)


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def build_objective_from(cfg: Config) -> Any:
    """The training objective of ``cfg.objective`` (train.label_smoothing is the ce objective's default)."""
    options = {k: v for k, v in cfg.objective.items() if k != "name"}
    if cfg.objective["name"] == "ce":
        options.setdefault("label_smoothing", cfg.train.label_smoothing)
    return build_objective(cfg.objective["name"], **options)


def build_weight_perturbation_from(cfg: Config, threat: ThreatModel) -> Any:
    """The weight perturbation of ``cfg.weight_perturbation``, or None."""
    section = cfg.weight_perturbation
    if section is None:
        return None
    return build_weight_perturbation(section["name"], threat, **{k: v for k, v in section.items() if k != "name"})


def build_trainer(cfg: Config, run_dir: Path, data: Data | None = None) -> tuple[Trainer, Data]:
    """The Trainer for ``cfg`` writing into ``run_dir`` (loggers and checkpointer attached)."""
    data = data or build_data(cfg)
    device = resolve_device(cfg.data.device)
    torch.manual_seed(cfg.seed)  # model initialisation
    model = build_model(cfg, data.info, device)
    threat = make_threat(cfg.threat.norm, cfg.threat.eps)
    amp = AMP[cfg.train.amp]
    attack = build_attack_from(cfg.attack, threat, default_bn="train", amp_dtype=amp)
    val_attack = build_attack_from(cfg.validation.attack, threat, default_bn="eval", force_eval=True, amp_dtype=amp)
    terms = [build_regulariser(s["name"], threat, **{k: v for k, v in s.items() if k != "name"})
             for s in cfg.regularisers]
    steps_per_epoch = len(data.train)
    s = cfg.schedule
    schedule = LRSchedule(s.name, cfg.optim.lr, steps_per_epoch * cfg.train.epochs, steps_per_epoch, peak=s.peak,
                          milestones=tuple(float(m) for m in s.milestones), gamma=s.gamma, factors=tuple(s.factors),
                          count_from=s.count_from, at=s.at, cycle_momentum=s.cycle_momentum,
                          base_momentum=s.base_momentum, max_momentum=s.max_momentum)
    callbacks = [
        JSONLLogger(run_dir / "metrics.jsonl", every=cfg.train.log_every),
        *([build_monitor(cfg, data, threat)] if cfg.monitor.enabled else []),
        Checkpointer(run_dir, monitor=cfg.validation.select_on, every_steps=cfg.train.checkpoint_every),
        ProgressBar(enabled=cfg.train.progress),
        build_tracker(cfg, run_dir),
    ]
    extra_val = {"fgsm": build_attack_from({"name": "fgsm"}, threat, default_bn="eval", force_eval=True, amp_dtype=amp)} \
        if cfg.validation.fgsm else {}
    rank = current().rank
    if rank:  # the same initial weights everywhere (seeded above); rank r's own global RNG stream (dropout)
        torch.manual_seed(derive_seed("rank", cfg.seed, rank))
    trainer = Trainer(model, attack, build_optimizer(cfg, model), schedule, data.train, epochs=cfg.train.epochs,
                      val_loader=data.val, val_attack=val_attack, extra_val_attacks=extra_val,
                      objective=build_objective_from(cfg), loss_terms=terms, callbacks=callbacks,
                      weight_perturbation=build_weight_perturbation_from(cfg, threat),
                      grad_clip=cfg.train.grad_clip, amp_dtype=amp,
                      eps_warmup_steps=round(cfg.train.eps_warmup_epochs * steps_per_epoch), seed=cfg.seed,
                      config=to_dict(cfg), compile=cfg.train.compile)
    return trainer, data


def build_tracker(cfg: Config, run_dir: Path) -> WandbLogger:
    """The Weights & Biases callback of ``cfg.wandb`` (it resolves its mode and rank when training starts)."""
    w = cfg.wandb
    return WandbLogger(run_dir, mode=w.mode, project=w.project, entity=w.entity, group=w.group, tags=w.tags,
                       name=w.run_name or cfg.name, config=to_dict(cfg), environment=environment(),
                       log_every=cfg.train.log_every, log_checkpoints=w.log_checkpoints)


# -- run folder -----------------------------------------------------------------------------------------
def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    import numpy
    import torchvision

    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": numpy.__version__,
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(), "git_commit": git_commit(), "argv": sys.argv,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> None:
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
        env_path.write_text(json.dumps({**environment(), "world_size": current().world_size}, indent=2))
        if resume:
            for tmp in remove_stale_temporaries(run_dir):
                print(f"[robustrain] removed {tmp.name}, a checkpoint half-written when the run was killed "
                      "(the complete checkpoints are intact)")
    barrier()


# -- evaluation -----------------------------------------------------------------------------------------
def attack_label(section: dict, threat: ThreatModel) -> str:
    name = section["name"]
    if name == "pgd":
        return f"pgd-{section.get('steps', 10)}-{section.get('restarts', 1)}"
    return name


def evaluate_model(model: torch.nn.Module, loader: BatchLoader, attack: Attack, label: str, *, seed: int,
                   n_ex: int | None = None, amp_dtype: torch.dtype | None = None,
                   distributed: bool | None = None) -> EvalResult:
    """``evaluate`` on the first ``n_ex`` examples of ``loader``; ``distributed`` (default: in a process group)
    shards every batch over the ranks and gathers the per-example results on every rank."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    max_batches = None if n_ex is None else -(-n_ex // loader.batch_size)
    res = evaluate(model, loader.iterate(0), {label: attack}, generator=gen, amp_dtype=amp_dtype,
                   max_batches=max_batches, distributed=current().enabled if distributed is None else distributed)
    if n_ex is not None:
        res.correct = {k: v[:n_ex] for k, v in res.correct.items()}
    return res


def final_evaluation(cfg: Config, run_dir: Path, trainer: Trainer, data: Data, train_seconds: float) -> dict[str, Any]:
    """Evaluate the best (validation-chosen) and last checkpoints on the test split; write summary.json."""
    from .training.checkpoint import load_checkpoint

    threat = make_threat(cfg.threat.norm, cfg.threat.eps)
    amp = AMP[cfg.train.amp]
    attack = build_attack_from(cfg.eval.attack, threat, default_bn="eval", force_eval=True, amp_dtype=amp)
    label = attack_label(cfg.eval.attack, threat)
    rows = []
    for which in ("best", "last"):
        path = run_dir / f"{which}.pt"
        if not path.exists():
            continue
        ckpt = load_checkpoint(path, map_location=trainer.device)
        trainer.model.load_state_dict(ckpt["model"])
        t0 = time.perf_counter()
        res = evaluate_model(trainer.model, data.test, attack, label, seed=cfg.seed, n_ex=cfg.eval.n_ex, amp_dtype=amp)
        acc = res.accuracy()
        rows.append({"checkpoint": which, "epoch": ckpt["trainer"]["epoch"], "n_ex": res.n,
                     "clean_acc": round(100 * acc["clean"], 2), f"{label}_acc": round(100 * acc[label], 2),
                     "seconds": round(time.perf_counter() - t0, 1)})
    summary = {
        "name": cfg.name, "dataset": cfg.data.name, "model": cfg.model.name, "attack": cfg.attack["name"],
        "threat": {"norm": cfg.threat.norm, "eps": cfg.threat.eps}, "eval_attack": {**cfg.eval.attack, "step": attack.step if hasattr(attack, "step") else None},
        "selection": f"best.pt maximises {cfg.validation.select_on} on the held-out validation split",
        "test": rows, "train_seconds": round(train_seconds, 1), "history": trainer.history,
        "git_commit": git_commit(), "world_size": current().world_size,
    }
    table = format_table(rows, ["checkpoint", "epoch", "n_ex", "clean_acc", f"{label}_acc", "seconds"])
    if current().is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        (run_dir / "summary.md").write_text(f"# {cfg.name}: test accuracy (%)\n\n{table}\n")
    summary["table"] = table
    return summary


def run_training(cfg: Config, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``, then evaluate best and last on the test split."""
    prepare_run_dir(cfg, run_dir, resume)
    trainer, data = build_trainer(cfg, run_dir)
    ckpt = run_dir / "last.pt" if resume else None
    if resume and not ckpt.exists():
        raise ConfigError(f"--resume: {str(ckpt)!r} does not exist; nothing to resume in {str(run_dir)!r}.")
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
