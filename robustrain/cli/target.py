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
    from ..data import first_examples, make_loader

    n = len(ds) if n_ex is None else n_ex
    if not 0 < n <= len(ds):
        raise ConfigError(f"--n-ex {n_ex}: expected 1..{len(ds)} (the size of the {ds.name} split).")
    return first_examples(make_loader(ds, batch_size, shuffle=False, device=device), n)


def load_run_target(target: Path, *, checkpoint: str, split: str, data_root: str | None, device: str | None,
                    n_ex: int | None, batch_size: int | None, eps: float | None,
                    norm: str | None = None, data_options: dict[str, Any] | None = None) -> Target:
    """A robustrain run folder (its ``best.pt`` or ``last.pt``) or checkpoint file, on its own dataset
    (``data_options``: reader options that replace or add to the run's ``data.options``)."""
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
    if data_options:
        cfg.data.options = {**(cfg.data.options or {}), **data_options}
    cfg.data.device = device or cfg.data.device
    if eps is not None:
        from ..threat import check_radius

        check_radius(eps, "--eps", norm or cfg.threat.norm)
    if eps is not None or norm is not None:
        cfg.threat.norm = norm or cfg.threat.norm
        cfg.threat.eps = cfg.threat.eps if eps is None else eps
        validate(cfg)
    dev = resolve_device(cfg.data.device, "--device" if device else "data.device")
    data = build_data(cfg)
    model = build_model(cfg, data.info, dev)
    try:
        model.load_state_dict(ckpt.get("eval_model", ckpt["model"]))  # weight averaging: the averaged weights
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the model its own config describes "
                              f"({str(e)[:300]}); the file was edited or written by another robustrain version.") from e
    model.eval()
    if split == "val" and data.val is None:
        raise RobustrainError("this run has no validation split (data.val_size: 0); use --split test.")
    ds = (data.test if split == "test" else data.val).dataset
    x, y = _examples(ds, n_ex, batch_size or cfg.eval.batch_size, dev)
    sections = {cfg.eval.attack["name"]: dict(cfg.eval.attack)}
    return Target(model, x, y, data.info.num_classes, cfg.threat.norm, cfg.threat.eps, sections,
                  {"source": "robustrain checkpoint", "name": cfg.name, "path": str(path), "architecture": cfg.model.name,
                   "epoch": ckpt.get("trainer", {}).get("epoch"), "weights": ckpt.get("eval_weights") or "training"},
                  {"dataset": cfg.data.name, "split": split, "indices": f"first {x.shape[0]}",
                   **({"options": dict(cfg.data.options)} if cfg.data.options else {})},
                  target if target.is_dir() else target.parent, ckpt.get("trainer", {}).get("epoch"), AMP[cfg.train.amp])


def import_factory(spec: str):
    """The callable named by ``module:factory`` (imported, never evaluated); the current folder is importable."""
    from ..registry import import_callable

    try:
        return import_callable(spec, "--model", "mypkg.models:build_model")
    except RobustrainError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module failed while it was imported
        raise ConfigError(f"--model {spec!r}: importing {spec.partition(':')[0]!r} raised {_where(e)}; fix the "
                          "module.") from e


def _where(e: BaseException) -> str:
    """``TypeError: message (at file.py:12 in build)``: the exception and the innermost frame it came from."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    at = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(e).__name__}: {str(e)[:300]}{at}"


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
                        device: str | None, n_ex: int | None, batch_size: int,
                        data_options: dict[str, Any] | None = None) -> Target:
    """``module:factory`` called without arguments, ``weights`` loaded into it, on ``dataset``'s ``split``
    (``data_options``: the dataset reader's options, as ``data.options``)."""
    from ..data import load_dataset
    from ..build import resolve_device
    from ..evaluation.report import file_sha256

    if split != "test":
        raise ConfigError("--split val needs a robustrain run (its validation split); use --split test with --model.")
    dev = resolve_device(device or "auto", "--device")
    factory = import_factory(spec)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise ConfigError(f"--model {spec!r}: calling {spec.partition(':')[2]}() raised {_where(e)}. The factory is "
                          "called without arguments; fix it or wrap it in one that takes none.") from e
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
    return _on_test_split(model, spec, info, dataset=dataset, data_root=data_root, device=dev, n_ex=n_ex,
                          batch_size=batch_size, data_options=data_options)


def _on_test_split(model: nn.Module, spec: str, info: dict[str, Any], *, dataset: str, data_root: str | None,
                   device: torch.device, n_ex: int | None, batch_size: int,
                   data_options: dict[str, Any] | None = None) -> Target:
    """``model`` (any nn.Module: inputs in [0,1], normalisation inside) on the first ``n_ex`` test examples of
    ``dataset`` read with the reader options ``data_options``."""
    from ..data import load_dataset

    dev = device
    model = model.to(dev).eval()  # RobustBench convention; the official AutoAttack forgets this
    ds = load_dataset(dataset, data_root, "test", options=data_options)
    x, y = _examples(ds, n_ex, batch_size, dev)
    from ..guards import eval_mode

    try:
        with torch.no_grad(), eval_mode(model):  # a model left in train mode must not update its BatchNorm here
            out = model(x[:2])
    except Exception as e:  # noqa: BLE001 - the user's forward failed
        raise ConfigError(f"--model {spec!r} fails on {dataset} images of shape {tuple(x.shape[1:])} in [0,1]: "
                          f"{_where(e)}. Is it a model for {dataset}?") from e
    if out.dim() != 2 or out.shape[1] != ds.num_classes:
        raise ConfigError(f"--model {spec!r} returns outputs of shape {tuple(out.shape)} for {dataset}; expected "
                          f"(batch, {ds.num_classes}) logits.")
    return Target(model, x, y, ds.num_classes, None, None, {}, info,
                  {"dataset": ds.name, "split": "test", "indices": f"first {x.shape[0]}",
                   **({"options": dict(data_options)} if data_options else {})})


# -- RobustBench's model zoo -----------------------------------------------------------------------------------
ROBUSTBENCH = "robustbench:"
RB_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}
RB_THREATS = {"linf": "Linf", "l2": "L2"}


def import_robustbench():
    """The ``robustbench`` package. Its PyPI release (1.1.1) imports ``autoattack``, which PyPI ships as
    ``pyautoattack``, and ``pkg_resources``, which setuptools 81 removed; where those imports fail, the installed
    ``pyautoattack`` and a ``pkg_resources.resource_filename`` over ``importlib.resources`` stand in for them while
    robustbench is imported (and are taken out of ``sys.modules`` again, so nothing else sees them)."""
    import types

    if "robustbench" in sys.modules:
        return sys.modules["robustbench"]
    stand_ins: dict[str, Any] = {}
    try:
        importlib.import_module("autoattack")
    except ImportError:
        try:
            stand_ins["autoattack"] = importlib.import_module("pyautoattack")
            stand_ins["autoattack.state"] = importlib.import_module("pyautoattack.state")
        except ImportError:
            pass  # robustbench's own import error below says what is missing
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        from importlib import resources

        stand_ins["pkg_resources"] = types.SimpleNamespace(
            resource_filename=lambda package, path: str(resources.files(package) / path))
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("robustbench")
    except ImportError as e:
        raise ConfigError(f"--model robustbench:NAME needs the robustbench package ({e}); install it with  pip install "
                          "robustbench  (or  pip install robustrain[robustbench]).") from e
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def robustbench_checkpoint(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> Path:
    """Where ``robustbench.utils.load_model`` reads model ``name``: ``MODEL_DIR/<dataset>/<threat model>/<name>.pt``."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def load_robustbench_target(name: str, *, model_dir: str, dataset: str, norm: str, data_root: str | None,
                            device: str | None, n_ex: int | None, batch_size: int,
                            data_options: dict[str, Any] | None = None) -> Target:
    """Model ``name`` of RobustBench's zoo for ``dataset`` and the ``norm`` threat model, loaded by
    ``robustbench.utils.load_model`` from ``model_dir`` (its layout: ``<dataset>/<Linf|L2>/<name>.pt``), on the
    test split. A checkpoint missing from ``model_dir`` is an error that says where to put it (robustbench would
    download it from Google Drive)."""
    from ..build import resolve_device
    from ..errors import unknown_choice
    from ..evaluation.report import file_sha256

    if dataset not in RB_DATASETS:
        raise unknown_choice("RobustBench dataset", dataset, list(RB_DATASETS), "--dataset")
    if norm not in RB_THREATS:
        raise ConfigError(f"--model robustbench:{name} --norm {norm}: RobustBench's zoo has L∞ and L2 models only; "
                          "use --norm linf or --norm l2.")
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.utils import load_model

    ds_key, threat = BenchmarkDataset(RB_DATASETS[dataset]), ThreatModel(RB_THREATS[norm])
    zoo = model_dicts[ds_key][threat]
    if name not in zoo:
        raise unknown_choice(f"RobustBench {dataset} {RB_THREATS[norm]} model", name, sorted(zoo), "--model")
    path = robustbench_checkpoint(name, model_dir, ds_key.value, threat.value)
    if not path.is_file():
        raise ConfigError(f"--model robustbench:{name}: no checkpoint at {str(path)!r}. robustbench downloads it from "
                          "Google Drive, which needs internet: fetch it where there is one (robustbench.utils."
                          f"load_model({name!r}, model_dir=..., dataset={ds_key.value!r}, threat_model="
                          f"{threat.value!r})) and copy the .pt file there, or point --model-dir at the folder holding "
                          f"{ds_key.value}/{threat.value}/.")
    try:
        model = load_model(name, model_dir=str(model_dir), dataset=ds_key.value, threat_model=threat.value)
    except Exception as e:  # noqa: BLE001 - robustbench raises several types for a bad checkpoint
        raise CheckpointError(f"robustbench could not load {str(path)!r} into {name}: {type(e).__name__}: "
                              f"{str(e)[:300]}") from e
    info = {"source": "robustbench", "name": name, "dataset": ds_key.value, "threat_model": threat.value,
            "checkpoint": str(path), "weights_sha256": file_sha256(path),
            "robustbench": getattr(importlib.import_module("robustbench"), "__version__", None) or _dist_version()}
    return _on_test_split(model, f"robustbench:{name}", info, dataset=dataset, data_root=data_root,
                          device=resolve_device(device or "auto"), n_ex=n_ex, batch_size=batch_size,
                          data_options=data_options)


def _dist_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("robustbench")
    except metadata.PackageNotFoundError:
        return None
