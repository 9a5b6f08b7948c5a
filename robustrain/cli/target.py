"""What ``robustrain eval`` evaluates: a run folder or checkpoint, or any ``module:factory`` model plus a weights file
(RobustBench convention: inputs in [0,1], normalisation inside the model), on the first ``n_ex`` examples of a split."""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, RobustrainError


@dataclass
class Target:
    model: nn.Module
    x: Tensor
    y: Tensor
    num_classes: int
    norm: str | None                      # the training threat model of a run (None for module:factory)
    eps: float | None
    sections: dict[str, dict] = field(default_factory=dict)   # attack sections known from the run's config
    model_info: dict[str, Any] = field(default_factory=dict)
    data_info: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None           # where a run's eval.json goes
    epoch: int | None = None
    amp_dtype: torch.dtype | None = None


def _examples(ds, n_ex: int | None, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    from ..data import BatchLoader, first_examples

    n = len(ds) if n_ex is None else n_ex
    if not 0 < n <= len(ds):
        raise ConfigError(f"--n-ex {n_ex}: expected 1..{len(ds)} (the size of the {ds.name} split).")
    return first_examples(BatchLoader(ds, batch_size, shuffle=False, device=device), n)


def load_run_target(target: Path, *, checkpoint: str, split: str, data_root: str | None, device: str | None,
                    n_ex: int | None, batch_size: int | None, eps: float | None,
                    norm: str | None = None) -> Target:
    """A robustrain run folder (its ``best.pt`` or ``last.pt``) or checkpoint file, on its own dataset."""
    from ..config import from_dict, validate
    from ..build import AMP, build_data, build_model, resolve_device
    from ..training.checkpoint import load_checkpoint

    path = target / f"{checkpoint}.pt" if target.is_dir() else target
    ckpt = load_checkpoint(path)
    if "config" not in ckpt:
        raise CheckpointError(f"{str(path)!r} has no config: it is not a robustrain checkpoint. For other models use "
                              "--model module:factory --weights FILE.")
    cfg = from_dict(ckpt["config"])
    if data_root is not None:
        cfg.data.root = data_root
    cfg.data.device = device or cfg.data.device
    if eps is not None or norm is not None:
        cfg.threat.norm = norm or cfg.threat.norm
        cfg.threat.eps = cfg.threat.eps if eps is None else eps
        validate(cfg)
    dev = resolve_device(cfg.data.device)
    data = build_data(cfg)
    model = build_model(cfg, data.info, dev)
    model.load_state_dict(ckpt.get("eval_model", ckpt["model"]))  # weight averaging: the averaged weights
    model.eval()
    if split == "val" and data.val is None:
        raise RobustrainError("this run has no validation split (data.val_size: 0); use --split test.")
    ds = (data.test if split == "test" else data.val).dataset
    x, y = _examples(ds, n_ex, batch_size or cfg.eval.batch_size, dev)
    sections = {cfg.eval.attack["name"]: dict(cfg.eval.attack)}
    return Target(model, x, y, data.info.num_classes, cfg.threat.norm, cfg.threat.eps, sections,
                  {"source": "robustrain checkpoint", "name": cfg.name, "path": str(path), "architecture": cfg.model.name,
                   "epoch": ckpt.get("trainer", {}).get("epoch"), "weights": ckpt.get("eval_weights") or "training"},
                  {"dataset": cfg.data.name, "split": split, "indices": f"first {x.shape[0]}"},
                  target if target.is_dir() else target.parent, ckpt.get("trainer", {}).get("epoch"), AMP[cfg.train.amp])


def import_factory(spec: str):
    """The callable named by ``module:factory`` (imported, never evaluated); the current folder is importable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model {spec!r}: expected module:factory, e.g. mypkg.models:build_model.")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"--model {spec!r}: cannot import {module_name!r} ({e}); run from the folder that holds it "
                          "or install it.") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--model {spec!r}: {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--model {spec!r}: {attr!r} is not callable.")
    return obj


def load_state_dict_file(path: Path, device: torch.device) -> dict:
    """A state dict from ``path`` (``weights_only=True``): a bare one or one under ``model`` / ``state_dict``."""
    if not path.is_file():
        raise CheckpointError(f"--weights {str(path)!r} does not exist.")
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        raise CheckpointError(f"--weights {str(path)!r} could not be read with weights_only=True "
                              f"({type(e).__name__}: {str(e)[:200]}).") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"--weights {str(path)!r} holds {type(obj).__name__}, not a state dict of tensors.")
    return obj


def load_factory_target(spec: str, weights: str | None, *, dataset: str, split: str, data_root: str | None,
                        device: str | None, n_ex: int | None, batch_size: int) -> Target:
    """``module:factory`` called without arguments, ``weights`` loaded into it, on ``dataset``'s ``split``."""
    from ..data import load_dataset
    from ..build import resolve_device
    from ..evaluation.report import file_sha256

    if split != "test":
        raise ConfigError("--split val needs a robustrain run (its validation split); use --split test with --model.")
    dev = resolve_device(device or "auto")
    model = import_factory(spec)()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec!r} returned {type(model).__name__}, expected a torch.nn.Module.")
    info: dict[str, Any] = {"source": "module:factory", "name": spec}
    if weights is not None:
        state = load_state_dict_file(Path(weights), dev)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"--weights {weights!r} do not fit {spec!r}: {str(e)[:300]}") from e
        info.update(weights=str(weights), weights_sha256=file_sha256(weights))
    model = model.to(dev).eval()  # RobustBench convention; the official AutoAttack forgets this
    ds = load_dataset(dataset, data_root, "test")
    x, y = _examples(ds, n_ex, batch_size, dev)
    from ..guards import eval_mode

    with torch.no_grad(), eval_mode(model):  # a model left in train mode must not update its BatchNorm here
        out = model(x[:2])
    if out.dim() != 2 or out.shape[1] != ds.num_classes:
        raise ConfigError(f"--model {spec!r} returns outputs of shape {tuple(out.shape)} for {dataset}; expected "
                          f"(batch, {ds.num_classes}) logits.")
    return Target(model, x, y, ds.num_classes, None, None, {}, info,
                  {"dataset": ds.name, "split": split, "indices": f"first {x.shape[0]}"})
