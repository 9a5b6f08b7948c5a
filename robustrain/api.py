"""The Python-first API, re-exported lazily by ``robustrain`` itself: :func:`train`, :func:`load_model`,
:func:`evaluate`, :func:`build_attack`, :func:`list_recipes`.

A complete example (digits, bundled with scikit-learn; about a minute on two CPU cores)::

    import robustrain as rt

    result = rt.train("quickstart_digits", train={"epochs": 5}, out_dir="runs")   # a bundled recipe, overridden
    model = rt.load_model(result["run_dir"])                                         # best.pt, eval mode
    report = rt.evaluate(model, "digits", eps=0.1, attacks=["pgd"], n_ex=200)      # clean + PGD-50-10
    print(report["accuracy"])                                                       # {'clean': 0.98, 'pgd-50-10': ...}

    pgd = rt.build_attack("pgd", eps=0.1, steps=20)                                 # any attack by name
    x_adv = pgd(model, x, y).x_adv                                                  # x in [0, 1], N x C x H x W

This module sits in the top layer (beside ``cli``): it may use every other layer.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

__all__ = ["build_attack", "evaluate", "list_recipes", "load_model", "train"]


#: sections a mapping with a ``name`` replaces as a whole (another attack is not the old one with a new name)
NAMED_SECTIONS = ("attack", "objective", "weight_perturbation", "validation.attack", "eval.attack")


TRAIN_DATA = ("rt.train reads its data from the config's data section (data={'name': ..., 'root': ...}: a bundled "
              "dataset, 'folder', 'npz', 'torchvision:<Class>', or your own reader as 'module:function'; README, "
              "Data); it takes no DataLoader or dataset object. To train on your own DataLoader, give it to "
              "robustrain.training.Trainer (train_loader=..., val_loader=...), or to robustrain.build.build_trainer "
              "as a robustrain.build.Data.")


def _not_a_value(where: str, value: Any,
                 expected: str = "a config value (numbers, strings, lists and dicts)") -> "Exception":
    """The error for an object that is no config value (a DataLoader, a dataset, a tensor ...)."""
    from .errors import ConfigError

    what = type(value).__name__
    loader = isinstance(value, Iterable) or hasattr(value, "__getitem__")
    return ConfigError(f"{where} is a {what}, not {expected}" + (f". {TRAIN_DATA}" if loader else "."))


def _overrides(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``{"train": {"epochs": 3}, "name": "x"}`` -> ``["train.epochs=3", 'name="x"']`` (values as JSON, which is
    YAML, so they parse back exactly); a dataclass section merges key by key."""
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not (path in NAMED_SECTIONS and "name" in value):
            out += _overrides(value, path + ".")
        else:
            try:
                out.append(f"{path}={json.dumps(value)}")
            except (TypeError, ValueError):
                raise _not_a_value(f"rt.train: {path}=", value) from None
    return out


def _config(config: Any, overrides: Sequence[str]):
    from .config import Config, DEFAULTS_KEY, from_dict, load_config, merge_override, parse_override, to_dict
    from .errors import ConfigError

    if config is None or isinstance(config, (str, Path)):
        return load_config(config, list(overrides))
    if isinstance(config, Config):
        data = to_dict(config)
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
        if DEFAULTS_KEY in data:
            raise ConfigError("a config given as a dict cannot list defaults: files; load the recipe file by path or "
                              "name instead, or give the merged keys.")
    else:
        raise ConfigError(f"config must be a recipe path or name, a dict, a robustrain Config or None; got "
                          f"{type(config).__name__}."
                          + (f" {TRAIN_DATA}" if isinstance(config, Iterable) or hasattr(config, "__getitem__") else ""))
    for item in overrides:
        keys, value = parse_override(item)
        merge_override(data, keys, value)
    return from_dict(data)


def train(config: Any = None, *overrides: str, run_dir: str | Path | None = None, resume: bool = False,
          **values: Any) -> dict[str, Any]:
    """Train a recipe into a run folder, then evaluate its best and last checkpoints on the test split.

    Args:
        config: a bundled recipe name (``"cifar10_fgsm_rs"``, see :func:`list_recipes`), a YAML file, a dict, a
            :class:`robustrain.config.Config`, or None for the defaults (digits, small CNN, FGSM-RS).
        overrides: ``"key.sub=value"`` strings, as ``robustrain train --set``.
        run_dir: the run folder (default ``out_dir/name`` of the config).
        resume: continue the run in ``run_dir`` from its ``last.pt`` (exactly; refuses config changes that alter
            training).
        values: more overrides as keywords, nested sections as dicts: ``train={"epochs": 3}``, ``name="try1"``,
            ``data={"name": "folder", "root": "images"}``.

    Data: the config's ``data`` section names the dataset (a bundled one, ``folder``, ``npz``,
    ``torchvision:<Class>``, or a reader of your own as ``"module:function"``, see README "Data"), so the run
    folder's ``config.yaml`` says what was trained on and ``--resume`` reads the same data. ``rt.train`` takes no
    ``DataLoader`` or dataset object (a ConfigError says so); to train on your own DataLoaders, give them to
    :class:`robustrain.training.Trainer` (``train_loader``, ``val_loader``), or wrap them in a
    :class:`robustrain.build.Data` for :func:`robustrain.build.build_trainer`.

    Returns:
        The run's summary (as ``summary.json``): ``test`` (one row per checkpoint: clean and robust accuracy as
        fractions), ``history`` (per-epoch validation), ``train_seconds``, ..., and ``run_dir``.

    Example::

        import robustrain as rt
        result = rt.train("quickstart_digits", train={"epochs": 3}, name="digits_try")
        print(result["table"], result["run_dir"])
    """
    from .distributed import init_from_env, teardown
    from .run import run_training

    for i, item in enumerate(overrides):
        if not isinstance(item, str):
            raise _not_a_value(f"rt.train: positional argument {i + 2}", item,
                               'an override string such as "train.epochs=3"')
    cfg = _config(config, [*overrides, *_overrides(values)])
    folder = Path(run_dir) if run_dir is not None else Path(cfg.out_dir) / cfg.name
    init_from_env(cfg.data.device)
    try:
        summary = run_training(cfg, folder, resume=resume)
    finally:
        teardown()
    summary["run_dir"] = str(folder)
    return summary


def _checkpoint_path(path: Path, checkpoint: str) -> Path:
    from .errors import CheckpointError

    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"load_model: {str(path)!r} is neither a run folder nor a checkpoint file.")
    for name in (checkpoint, "last") if checkpoint == "best" else (checkpoint,):
        if (path / f"{name}.pt").is_file():
            return path / f"{name}.pt"
    present = sorted(p.name for p in path.glob("*.pt"))
    raise CheckpointError(f"load_model: {str(path)!r} holds no {checkpoint}.pt (checkpoints there: "
                          f"{', '.join(present) or 'none'}); train the run first or pass a checkpoint file.")


def load_model(path: str | Path, *, checkpoint: str = "best", device: str | torch.device = "cpu") -> nn.Module:
    """The model of a run folder (its ``best.pt``, else ``last.pt``; ``checkpoint="last"`` for the last one) or of a
    checkpoint file, rebuilt from the run's config and weights, in eval mode.

    With weight averaging (``procedures: [ema]`` or ``swa``) it is the averaged model, the one the run evaluated.
    Inputs are images in [0, 1] of shape N x C x H x W (the normalisation is the model's first layer); the output
    is N x num_classes logits. Checkpoints written before robustrain stored the data's shape and statistics in them
    need the run's dataset to be readable (its ``data.root``) to rebuild the model.

    Example::

        import robustrain as rt
        model = rt.load_model("runs/cifar10_fgsm_rs")            # or "runs/cifar10_fgsm_rs/last.pt"
        logits = model(torch.rand(8, 3, 32, 32))                  # 8 x 10
    """
    from .build import build_data, build_model
    from .config import from_dict
    from .errors import CheckpointError
    from .training.checkpoint import load_checkpoint

    if checkpoint not in ("best", "last"):
        raise CheckpointError(f"load_model: checkpoint must be 'best' or 'last'; got {checkpoint!r}.")
    file = _checkpoint_path(Path(path), checkpoint)
    ckpt = load_checkpoint(file, map_location="cpu")
    stored = ckpt.get("config")
    if not stored:
        raise CheckpointError(f"load_model: {str(file)!r} holds no config, so its architecture is unknown; it is not a "
                              "checkpoint written by robustrain train (load a plain state dict into your own model).")
    cfg = from_dict(stored)
    info = ckpt.get("model_info") or build_data(cfg).info  # older checkpoints: the dataset tells the shapes
    model = build_model(cfg, info, torch.device("cpu"))
    try:
        model.load_state_dict(ckpt.get("eval_model", ckpt["model"]))  # weight averaging: the averaged weights
    except RuntimeError as e:
        raise CheckpointError(f"load_model: the weights in {str(file)!r} do not fit the model its config describes "
                              f"({str(e)[:300]}).") from e
    return model.to(device).eval()


def build_attack(name: str, eps: float | str = 8 / 255, norm: str = "linf", **options: Any):
    """An attack by name (``fgsm``, ``fgsm_rs``, ``nfgsm``, ``pgd``, ``trades``, ...) on the ``norm`` ball of radius
    ``eps`` (fractions such as ``"8/255"`` allowed), with the attack's keyword options (``steps``, ``restarts``,
    ``step``, ...). Unknown names and options raise with the valid ones.

    Call it as ``attack(model, x, y)``: ``x`` images in [0, 1] (N x C x H x W), ``y`` labels (N); it returns an
    ``AttackResult`` whose ``x_adv`` lies in the ball and in [0, 1]. The model's mode, BatchNorm statistics and
    gradients are left as they were.

    Example::

        import robustrain as rt
        pgd = rt.build_attack("pgd", eps="8/255", steps=50, restarts=10, step="2/255")
        x_adv = pgd(model, x, y).x_adv
    """
    from .attacks import build_attack as build
    from .config import parse_number
    from .threat import check_radius, make_threat

    radius = parse_number(eps, "eps")
    norm = str(norm).lower()
    check_radius(radius, "eps", norm)
    parsed = {k: parse_number(v, k) if k in ("step", "eps_step") and isinstance(v, str) else v
              for k, v in options.items()}
    return build(name, make_threat(norm, radius), **parsed)


def _examples(data: Any, n_ex: int | None, device: torch.device, batch_size: int, root: Any) -> tuple[Any, Any, str]:
    """(x, y, description) from tensors, a dataset (object or name) or an iterable of batches."""
    from .data import ArrayDataset, StreamDataset, as_loader, first_examples, load_dataset, make_loader
    from .errors import ConfigError

    if isinstance(data, str):
        data = load_dataset(data, root, "test")
    if isinstance(data, (ArrayDataset, StreamDataset)):
        n = len(data) if n_ex is None else min(n_ex, len(data))
        x, y = first_examples(make_loader(data, batch_size, shuffle=False, device=device), n)
        return x, y, data.name
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = as_loader([tuple(data)], device).convert(tuple(data), 0)
        return x[:n_ex], y[:n_ex], "tensors"
    if not isinstance(data, Iterable):
        raise ConfigError(f"evaluate: data must be (x, y) tensors, a dataset name, a robustrain dataset or an iterable "
                          f"of (x, y) batches such as a DataLoader; got {type(data).__name__}.")
    xs, ys, have = [], [], 0
    for x, y in as_loader(data, device).iterate(0):
        xs.append(x)
        ys.append(y)
        have += len(y)
        if n_ex is not None and have >= n_ex:
            break
    if not xs:
        raise ConfigError("evaluate: the data yielded no batch.")
    return torch.cat(xs)[:n_ex], torch.cat(ys)[:n_ex], type(data).__name__


def evaluate(model: nn.Module, data: Any, *, eps: float | str = 8 / 255, norm: str = "linf",
             attacks: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("pgd", "autoattack"), n_ex: int | None = None,
             batch_size: int = 500, seed: int = 0, root: str | Path | None = None, out_dir: str | Path | None = None,
             progress: bool = False, **plan: Any) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` on ``data`` (model in eval mode, its state untouched), with the
    sanity checks and settings of ``robustrain eval``; returns its report (``report["accuracy"]``: fractions per
    attack and ``worst_case``; ``report["stages"]``: per attack, with its settings).

    Args:
        model: maps images in [0, 1] (N x C x H x W) to logits; normalisation inside.
        data: ``(x, y)`` tensors, a dataset name (its test split; ``root``: data.root), an ``ArrayDataset``, or any
            iterable of ``(x, y)`` batches such as a ``torch.utils.data.DataLoader`` (no Normalize transform).
        eps, norm: the threat model (``"8/255"`` allowed).
        attacks: names run after the clean pass, in order: ``pgd`` (PGD-50-10, step ε/4), ``autoattack`` (the
            standard cascade) or any attack name; or ``{name: {option: value}}``, e.g. ``{"pgd": {"steps": 20}}``.
        n_ex: the first ``n_ex`` examples (default: all).
        out_dir: where progress is saved (an interrupted evaluation continues from it); none by default.
        plan: more fields of :class:`robustrain.evaluation.EvalPlan` (``version``, ``backend``, ``aa_steps`` ...).

    Example::

        import robustrain as rt
        model = rt.load_model("runs/cifar10_fgsm_rs")
        report = rt.evaluate(model, test_loader, eps="8/255", attacks=["pgd"], n_ex=1000)
        print(report["accuracy"]["clean"], report["accuracy"]["worst_case"])
    """
    from .config import check_attack_section, parse_number
    from .evaluation import EvalPlan, evaluate_robustness
    from .evaluation.pipeline import AUTOATTACK_NAMES, DEFAULT_PGD
    from .guards import eval_mode
    from .threat import check_radius, make_threat

    radius = parse_number(eps, "eps")
    norm = str(norm).lower()
    check_radius(radius, "eps", norm)
    device = next(model.parameters()).device
    x, y, source = _examples(data, n_ex, device, batch_size, root)
    specs = dict(attacks) if isinstance(attacks, Mapping) else {str(a).lower(): {} for a in attacks}
    sections = {}
    for name, options in specs.items():
        if name == "clean" or name in AUTOATTACK_NAMES:
            continue
        base = dict(DEFAULT_PGD) if name == "pgd" else {"name": name}
        section = {**base, **dict(options)}
        check_attack_section(section, f"attacks[{name!r}]", norm)
        sections[name] = section
    with torch.no_grad(), eval_mode(model):
        num_classes = int(model(x[:2]).shape[1])
    run_plan = EvalPlan(make_threat(norm, radius), attacks=["clean", *[a for a in specs if a != "clean"]],
                        sections=sections, batch_size=batch_size, seed=seed, **plan)
    report, _ = evaluate_robustness(model, x, y, run_plan, num_classes=num_classes,
                                    data_info={"dataset": source, "split": "given", "indices": f"first {len(y)}"},
                                    out_dir=Path(out_dir) if out_dir is not None else None, progress=progress)
    return report


def list_recipes() -> dict[str, str]:
    """The bundled recipes: ``{name: one-line description}`` (the first line of each recipe's header)."""
    from .config import recipe_summaries

    return recipe_summaries()
