"""Building: from a validated :class:`~robustrain.config.Config` to data, model, attacks, monitor and the Trainer.

Public API:

* :func:`build_trainer`: the Trainer of a config writing into a run folder (loggers, monitor, checkpointer,
  tracker attached), and its :class:`Data`.
* :func:`build_data`, :func:`build_model`, :func:`build_optimizer`, :func:`build_objective_from`,
  :func:`build_weight_perturbation_from`, :func:`build_procedures_from`, :func:`build_remedy_from`,
  :func:`build_monitor`, :func:`build_tracker`: its parts.
* :func:`resolve_device`, :data:`AMP`: the device and autocast dtype of a config's names.
* :func:`~robustrain.attacks.sections.build_attack_from` (re-exported): an attack from a config section.

Running a run (the run folder, fit, the final evaluation) is :mod:`robustrain.run`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .attacks.sections import build_attack_from
from .config import Config, to_dict
from .data import ArrayDataset, BatchLoader, StreamDataset, first_examples, make_loader, read_splits, split_validation
from .data.loader import derive_seed
from .distributed import current, device_for
from .errors import ConfigError
from .models import create_model
from .perturbation import build_weight_perturbation
from .provenance import environment
from .regularisers import build_regulariser
from .threat import ThreatModel, make_threat
from .tracking import WandbLogger
from .training import Checkpointer, JSONLLogger, LRSchedule, ProgressBar, Trainer
from .training.monitor import OverfitMonitor
from .training.monitor_rules import build_rule
from .training.objectives import build_objective
from .training.procedures import build_procedure
from .training.remedies import Remedy, build_remedy
from .training.overfitting import COThresholds, co_rules

AMP = {None: None, "bf16": torch.bfloat16}


@dataclass
class Data:
    train: BatchLoader  # or a StreamLoader (data.stream)
    val: BatchLoader | None
    test: BatchLoader
    info: ArrayDataset | StreamDataset  # the training set (num_classes, mean, std, shape)


def resolve_device(name: str, where: str = "data.device") -> torch.device:
    """``auto``: CUDA if available, else CPU; in a torchrun process group ``cuda`` means this rank's GPU. A device
    string torch does not know, or a CUDA / MPS device this machine does not have, is a ConfigError."""
    from .config import check_device

    check_device(name, where)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ConfigError(f"{where} = {name!r}, but this machine has {count or 'no'} CUDA device"
                              f"{'s' if count != 1 else ''} visible to PyTorch (CUDA_VISIBLE_DEVICES="
                              f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Use {where}=cpu, or auto (a GPU "
                              "when there is one).")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{where} = {name!r}, but MPS is not available here; use cpu or auto.")
    return device_for(device)


def check_model_fits(model: torch.nn.Module, cfg: Config, data: ArrayDataset, device: torch.device) -> None:
    """One forward pass (eval mode, no gradients, the model's modes restored) of two training images: a model that
    does not take the data's images or does not give ``num_classes`` logits fails here, before anything is
    written, not after the first step. Draws no random numbers."""
    from .guards import eval_mode

    if hasattr(data, "images"):
        images = data.images[:2]
    else:  # a streamed split (data.stream) holds no decoded images: decode its first item
        images = data.source.load(int(data.indices[0]), None)[0].unsqueeze(0)
    x = images.to(device).float() / (255 if not images.is_floating_point() else 1)
    shape = tuple(x.shape[1:])
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x.contiguous(memory_format=torch.channels_last) if cfg.model.channels_last else x)
    except Exception as e:  # noqa: BLE001 - any failure of the user's architecture settings
        raise ConfigError(
            f"model {cfg.model.name!r} (model.kwargs = {cfg.model.kwargs!r}) cannot take {cfg.data.name}'s "
            f"{shape} images: {type(e).__name__}: {str(e)[:300]}. Fix model.kwargs (e.g. input_size: "
            f"{shape[-1]}) or choose a model for this dataset.") from None
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise ConfigError(f"model {cfg.model.name!r} returns outputs of shape {tuple(out.shape)} for {cfg.data.name}; "
                          f"expected (batch, {data.num_classes}) logits. Fix model.kwargs.")


def build_data(cfg: Config, *, need_train: bool = True) -> Data:
    d = cfg.data
    device = resolve_device(d.device)
    full, test = read_splits(d.name, d.root, d.download, options=d.options, stream=d.stream, workers=d.workers,
                             seed=cfg.seed)
    if d.val_size > 0:
        train, val = split_validation(full, d.val_size, seed=cfg.seed)
    else:
        train, val = full, None
    if d.train_subset is not None:
        if not 0 < d.train_subset <= len(train):
            raise ConfigError(f"data.train_subset = {d.train_subset}; expected 1..{len(train)} (the training set after the validation split).")
        train = train.subset(torch.arange(d.train_subset))
    dist = current()  # distributed: each rank loads its shard of every global batch of d.batch_size
    w = d.workers
    train_loader = make_loader(train, d.batch_size, workers=w, shuffle=True, drop_last=False, augment=d.augment,
                               seed=cfg.seed, device=device, rank=dist.rank, world_size=dist.world_size)
    val_loader = make_loader(val, d.eval_batch_size, workers=w, shuffle=False, device=device) if val is not None \
        else None
    test_loader = make_loader(test, cfg.eval.batch_size, workers=w, shuffle=False, device=device)
    return Data(train_loader, val_loader, test_loader, full)


def build_model(cfg: Config, info: ArrayDataset | StreamDataset | dict, device: torch.device) -> torch.nn.Module:
    """The model of ``cfg`` for data described by ``info`` (a dataset, or the :func:`model_info` of a checkpoint)."""
    if isinstance(info, dict):
        num_classes, in_channels, mean, std = info["num_classes"], info["image_shape"][0], info["mean"], info["std"]
    else:
        num_classes, in_channels, mean, std = info.num_classes, info.image_shape[0], info.mean, info.std
    model = create_model(cfg.model.name, num_classes=num_classes, in_channels=in_channels,
                         mean=tuple(mean), std=tuple(std), normalise=cfg.model.normalise,
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
                          n_val=len(data.val.dataset), action=m.action, remedy=build_remedy_from(cfg, threat),
                          max_rollbacks=m.max_rollbacks, seed=cfg.seed)


def build_remedy_from(cfg: Config, threat: ThreatModel) -> Remedy | None:
    """The remedy of ``cfg.monitor.remedy`` (applied by ``trainer.apply`` when the monitor rolls back), or None."""
    if not cfg.monitor.remedy:
        return None
    return build_remedy(cfg.monitor.remedy, threat=threat, build_term=build_regulariser)


def build_procedures_from(cfg: Config) -> list[Any]:
    """The training procedures of ``cfg.procedures``, in order."""
    return [build_procedure(spec) for spec in cfg.procedures]


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
    check_model_fits(model, cfg, data.info, device)
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
        Checkpointer(run_dir, monitor=cfg.validation.select_on if data.val is not None else None,
                     every_steps=cfg.train.checkpoint_every),  # no validation split (val_size 0): last.pt only
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
                      procedures=build_procedures_from(cfg),
                      grad_clip=cfg.train.grad_clip, amp_dtype=amp,
                      eps_warmup_steps=round(cfg.train.eps_warmup_epochs * steps_per_epoch), seed=cfg.seed,
                      config=to_dict(cfg), model_info=model_info(data.info),
                      compile=resolve_compile(cfg.train.compile, model))
    return trainer, data


def resolve_compile(compile: bool | None, model: torch.nn.Module) -> bool:
    """``train.compile``: as given, or (null) on when the model is on a CUDA device."""
    if compile is not None:
        return bool(compile)
    return next(model.parameters()).device.type == "cuda"


def model_info(info: ArrayDataset | StreamDataset) -> dict[str, Any]:
    """What rebuilding the model of a run needs besides its config (stored in its checkpoints)."""
    return {"num_classes": info.num_classes, "image_shape": list(info.image_shape), "mean": list(info.mean),
            "std": list(info.std), "dataset": info.name}


def build_tracker(cfg: Config, run_dir: Path) -> WandbLogger:
    """The Weights & Biases callback of ``cfg.wandb`` (it resolves its mode and rank when training starts)."""
    w = cfg.wandb
    return WandbLogger(run_dir, mode=w.mode, project=w.project, entity=w.entity, group=w.group, tags=w.tags,
                       name=w.run_name or cfg.name, config=to_dict(cfg), environment=environment(),
                       log_every=cfg.train.log_every, log_checkpoints=w.log_checkpoints, quiet=w.quiet)


__all__ = [
    "AMP", "Data", "build_attack_from", "build_data", "build_model", "build_monitor", "build_objective_from",
    "build_optimizer", "build_procedures_from", "build_remedy_from", "build_tracker", "build_trainer",
    "build_weight_perturbation_from", "check_model_fits", "model_info", "resolve_device",
]
