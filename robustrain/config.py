"""Typed, validated configuration: dataclasses are the schema, YAML files and ``key=value`` overrides
fill them.

Rules: an unknown key names the closest valid one; values are converted to the field's type (numbers
may be written as fractions such as ``8/255``, never evaluated as code); an L∞ radius above 1 is rejected
with a hint about /255; the attack sections are checked against the attack's own arguments.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, did_you_mean, unknown_key
from .registry import BEHAVIOURS, Registry, choice
from .threat import THREAT_MODELS
from .threat import check_radius as _check_radius


def _attack_field(**defaults: Any) -> Any:
    return field(default_factory=lambda: dict(defaults))


@dataclass
class DataConfig:
    """Dataset and loaders. ``name``: cifar10, cifar100, svhn, mnist, digits (bundled, needs no root), ``folder``
    (ROOT/train/<class>/*, ROOT/test|val/<class>/*), ``npz`` (ROOT/train.npz, ROOT/test.npz with x, y),
    ``tiny_imagenet``, ``imagenet``, ``torchvision:<Class>`` (any torchvision dataset class, its own layout) or a
    name registered with ``robustrain.data.register_dataset``. ``root`` is where the files are. ``options``: the
    reader's options (image folders: image_size, resize, channels; npz: num_classes; torchvision: the class's
    arguments, with per-split ones under train / test). ``stream``: decode and augment per batch in ``workers``
    DataLoader processes instead of holding the split in memory (true / false; null: stream image files whose
    decoded training split exceeds 4 GiB). ``val_size`` images are held out of the training set for validation.
    ``augment``: crop_flip, crop, or (streaming) random_resized_crop."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    options: dict = field(default_factory=dict)
    stream: bool | None = None
    workers: int = 4
    val_size: int = 200
    batch_size: int = 128
    eval_batch_size: int = 500
    augment: str | None = None
    train_subset: int | None = None
    device: str = "auto"


@dataclass
class ModelConfig:
    """Architecture by registry name (``preact_resnet18``, ``wrn28_10``, ``small_cnn``, ``timm:<name>``
    ...) and its keyword arguments. ``normalise: false`` builds it without the mean/std layer (the network sees
    raw [0,1] inputs, as the official Wong-MNIST, TRADES, TRADES-AWP, MART, ELLE and ConvergeSmooth code feeds it).
    ``channels_last: true`` stores the convolution weights channels_last: on CPU the eager FGSM-RS / PGD-10 training
    step of a PreActResNet-18 ran 1.24× / 1.19× faster (results/benchmarks/train_step.md; compiled steps gained
    nothing), at the same results up to float rounding; opt-in, since it changes the rounding of every run."""

    name: str = "small_cnn"
    kwargs: dict = field(default_factory=dict)
    channels_last: bool = False
    normalise: bool = True


@dataclass
class ThreatConfig:
    """The ball the attacks live in: ``norm`` linf or l2, radius ``eps`` in [0,1] pixel units."""

    norm: str = "linf"
    eps: float = 8 / 255


OPTIMISERS = ("sgd", "adam", "adamw")


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: list = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    """Per-iteration learning-rate (and momentum) schedule; robustrain/training/schedules.py documents each kind and
    the official script it reproduces. ``cyclic``: torch's CyclicLR 0 → lr → 0 (peak at ``peak`` of all iterations)
    with its momentum cycling (``cycle_momentum``, null = on when the optimiser has momentum; ``max_momentum`` 0.9 at
    lr 0, ``base_momentum`` 0.8 at the peak; Adam: beta1). ``interp``: np.interp(t, [0, epochs·peak (integer
    division), epochs], [0, lr, 0]) at t = epoch + (i+1)/n_batches (Wong MNIST, GradAlign). ``multistep``: lr until
    the first of ``milestones`` (epochs), then × ``factors`` (one per milestone; "a/b" strings divide) or chained
    ``gamma``; ``count_from`` 0 | 1 says how milestones count epochs (1: TRADES/AWP/MART scripts, ``epoch >= m`` with
    epochs from 1); ``at`` epoch | batch_end (batch_end: at t = epoch + (i+1)/n, the Rice/AWP/RWP piecewise
    schedule). ``onecycle``: torch's OneCycleLR (lr/25 → lr at ``peak`` → lr/25/1e4, cosine phases, momentum cycling
    as ``cyclic``), stepped per epoch (``at: epoch``, FastAT_Benchmark) or per iteration (``at: batch_end``).
    ``constant``, ``cosine``."""

    name: str = "cyclic"
    peak: float = 0.5
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    factors: list = field(default_factory=list)
    count_from: int = 0
    at: str = "epoch"
    cycle_momentum: bool | None = None
    base_momentum: float = 0.8
    max_momentum: float = 0.9


@dataclass
class TrainConfig:
    epochs: int = 15
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: str | None = None
    eps_warmup_epochs: float = 0.0
    checkpoint_every: int = 0
    log_every: int = 10
    progress: bool = True
    compile: bool | None = None  # torch.compile the training step (forward, loss, backward; eager fallback with a
    # warning); null: on CUDA yes, elsewhere no
    sync_batchnorm: bool = False  # distributed (torchrun) on GPUs: BatchNorm statistics over the global batch


@dataclass
class ValidationConfig:
    """Per-epoch validation on the held-out split (eval mode); the best checkpoint maximises ``select_on``."""

    attack: dict = _attack_field(name="pgd", steps=10, restarts=1)
    select_on: str = "val_robust_acc"
    fgsm: bool = True  # also report val_fgsm_acc (zero-init FGSM, step ε): a gap to PGD flags CO


@dataclass
class EvalConfig:
    """Test-set evaluation after training (and the defaults of ``robustrain eval``)."""

    attack: dict = _attack_field(name="pgd", steps=50, restarts=10)
    n_ex: int | None = None
    batch_size: int = 500


@dataclass
class MonitorConfig:
    """The overfitting monitor (robustrain/training/monitor.py; rules in robustrain/training/monitor_rules/). CO: every
    ``every`` steps (default once per epoch) clean / FGSM / PGD-``pgd_steps`` accuracy of ``n_check`` held-out
    images; declared when PGD accuracy falls below its best by more than ``co_drop`` or the sampling-error bound,
    whichever is larger, while clean or FGSM accuracy stays within ``co_stable`` of theirs, or when FGSM accuracy
    exceeds PGD accuracy by more than ``co_gap`` or ``co_healthy_gap`` plus its sampling-error bound (null turns that
    rule off). RO: validation robust accuracy averaged over ``ro_window`` epochs (null: epochs/20, 2 to 10) below the
    best such average by more than ``ro_margin`` or the sampling-error bound (from ``data.val_size``) for
    ``ro_patience`` epochs, watched only after the schedule's first lr decay unless ``ro_after_decay: false``. The
    bounds keep each rule's false-alarm probability per run at ``false_alarm`` (binomial noise; results/studies/monitor_cifar10_replay.md
    measures it). ``rules``: replaces the default rules, names or {name: ..., option: value}; opt-in rules:
    ``robust_overfitting_paired`` (the RO test on the validation images' own flags, better from ~500 images up;
    results/studies/monitor_cifar10_replay_paired.md) and ``signal_rise`` (CO from a declared signal such as AAER's
    abnormal rate; results/studies/monitor_signals_mnist.md). ``action``: warn, stop
    or rollback (to the last healthy check, with a ``remedy``: {kind: lr, factor: 0.5}, {kind: attack, name: nfgsm},
    {kind: regulariser, name: ...})."""

    enabled: bool = False
    every: int | None = None
    n_check: int = 256
    pgd_steps: int = 10
    train_batch: bool = False
    false_alarm: float = 0.01
    co_drop: float = 0.2
    co_stable: float = 0.2
    co_gap: float | None = 0.3
    co_healthy_gap: float = 0.2
    ro_margin: float = 0.01
    ro_patience: int = 1
    ro_window: int | None = None
    ro_after_decay: bool = True
    rules: list | None = None
    action: str = "warn"
    remedy: dict = field(default_factory=dict)
    max_rollbacks: int = 2


@dataclass
class WandbConfig:
    """Weights & Biases tracking (rank 0 only). ``mode``: auto (the WANDB_MODE environment variable if set, else
    online when an API key is configured and api.wandb.ai answers within a second, else offline), online,
    offline (``wandb sync`` uploads later; the command is printed at the end) or disabled. ``metrics.jsonl`` is
    written in every mode. ``log_checkpoints`` uploads best.pt and last.pt as model artifacts. ``quiet`` (default)
    silences wandb's own console output: robustrain prints one line when tracking starts and, for an offline run,
    the ``wandb sync`` command with every offline folder of the run at the end."""

    mode: str = "auto"
    project: str = "robustrain"
    entity: str | None = None
    group: str | None = None
    tags: list = field(default_factory=list)
    run_name: str | None = None  # default: the config's name
    log_checkpoints: bool = False
    quiet: bool = True


@dataclass
class Config:
    """A whole run. ``out_dir/name`` is the run folder."""

    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    attack: dict = _attack_field(name="fgsm_rs", bn_mode="train")
    objective: dict = _attack_field(name="ce")  # ce | trades | mart and its options (e.g. beta)
    regularisers: list = field(default_factory=list)
    weight_perturbation: dict | None = None  # null, or {name: awp | rwp | lap, ...options}
    procedures: list = field(default_factory=list)  # training procedures, [{name: ..., ...options}] (training/procedures/)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


# -- value conversion -----------------------------------------------------------------------------------
def parse_number(value: Any, where: str) -> float:
    """A float from a number or a fraction string such as ``"8/255"`` (parsed, never evaluated)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got the boolean {value!r}.")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{where}: expected a number such as 0.5 or a fraction such as 8/255, got {value!r}.")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if tp is float:
        return parse_number(value, where)
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where}: expected an integer, got {value!r}.")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}.")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}.")
        return value
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}.")
        return list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}.")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise unknown_key(key, names, where)
        kwargs[key] = _convert(value, hints[key], path)
    obj = cls()
    for key, value in kwargs.items():
        default = getattr(obj, key)
        if isinstance(value, dict) and isinstance(default, dict) and "name" in default and "name" not in value:
            value = {**default, **value}  # a named section without a name refines its default (any level)
        setattr(obj, key, value)
    return obj


# -- validation -----------------------------------------------------------------------------------------
def check_section(registry: Registry, section: Any, where: str, norm: str, hidden: tuple[str, ...] = ()) -> None:
    """Check a ``{name: ..., option: value}`` section against the registry entry's options and parse its numbers
    (fractions allowed) in place; radii and steps above 1 under L∞ are refused with a hint."""
    from .registry import takes_number

    if not isinstance(section, dict) or registry.key not in section:
        raise ConfigError(f"{where} must be a mapping with a {registry.key!r}; one of: {', '.join(registry)}; "
                          f"got {section!r}.")
    name = section[registry.key]
    params = registry.check(name, (), where, hidden)
    if "behaviour" in section:
        check_behaviour(registry, name, section["behaviour"], where, "behaviour" in params)
    registry.check(name, [k for k in section if k != registry.key], where, hidden)
    for key, value in section.items():
        if key != registry.key and value is not None and takes_number(params[key]):
            section[key] = parse_number(value, f"{where}.{key}")
            if key in ("step", "eps"):
                _check_radius(section[key], f"{where}.{key}", norm)


def check_behaviour(registry: Registry, name: str, value: Any, where: str, has_switch: bool) -> None:
    """``behaviour`` is only for methods whose paper and official code train differently (the class takes a
    ``behaviour`` argument; its choices are the class's ``behaviours``, default paper | code); anything else is a
    config error naming the choices, or the methods that have the switch."""
    kind, cls = registry.kind, registry[name]
    if not has_switch:
        with_switch = [n for n in registry if "behaviour" in registry.options(n)]
        note = getattr(cls, "behaviour_note", "")
        raise ConfigError(
            f"{where}.behaviour: {kind} {name!r} has no paper/code behaviour switch"
            + (f" ({note})" if note else "") + "; remove the key. "
            + (f"{kind.capitalize()}s with one (behaviour: {' | '.join(BEHAVIOURS)}): {', '.join(sorted(with_switch))}."
               if with_switch else f"No {kind} has one.")
        )
    choice(f"behaviour of {kind} {name!r}", value, getattr(cls, "behaviours", BEHAVIOURS), f"{where}.behaviour")


def check_attack_section(section: dict, where: str, norm: str) -> None:
    from .attacks import ATTACKS

    check_section(ATTACKS, section, where, norm, hidden=("loss_fn", "amp_dtype"))


def _check_objective_and_perturbation(cfg: Config) -> None:
    from .perturbation import WEIGHT_PERTURBATIONS
    from .training.objectives import OBJECTIVES

    check_section(OBJECTIVES, cfg.objective, "objective", cfg.threat.norm)
    smoothing = cfg.objective.get("label_smoothing")
    if cfg.train.label_smoothing and (cfg.objective["name"] != "ce" or smoothing not in (None, cfg.train.label_smoothing)):
        raise ConfigError(
            f"train.label_smoothing = {cfg.train.label_smoothing:g} conflicts with objective = {cfg.objective!r}: label "
            "smoothing belongs to the ce objective; set it in one place (objective.label_smoothing)."
        )
    if cfg.weight_perturbation is not None:
        check_section(WEIGHT_PERTURBATIONS, cfg.weight_perturbation, "weight_perturbation", cfg.threat.norm)
    _check_procedures(cfg)


def _check_procedures(cfg: Config) -> None:
    from .training.procedures import PROCEDURES

    if not isinstance(cfg.procedures, list):
        raise ConfigError(f"procedures must be a list of {{name: ..., option: value}} mappings; got {cfg.procedures!r}.")
    cfg.procedures = [{"name": p} if isinstance(p, str) else p for p in cfg.procedures]  # a bare name: no options
    evaluated = []
    for i, section in enumerate(cfg.procedures):
        check_section(PROCEDURES, section, f"procedures[{i}]", cfg.threat.norm)
        options = {k: v for k, v in section.items() if k != "name"}
        try:  # the constructor checks the values (ranges, choices): a bad one fails here, before anything is built
            PROCEDURES[section["name"]](**options)
        except ConfigError as e:
            raise ConfigError(f"procedures[{i}]: {e}") from None
        if PROCEDURES[section["name"]].provides_eval_model:
            evaluated.append(section["name"])
    if len(evaluated) > 1:
        raise ConfigError(f"procedures: {' and '.join(evaluated)} both provide the model to evaluate (weight "
                          "averaging); keep one.")


def validate(cfg: Config) -> Config:
    """Cross-field checks; raises ConfigError with a fix for each problem."""
    cfg.threat.norm = choice("threat-model norm", str(cfg.threat.norm).lower(), THREAT_MODELS, "threat.norm")
    _check_radius(cfg.threat.eps, "threat.eps", cfg.threat.norm)
    for where in ("attack", "validation.attack", "eval.attack"):
        section = cfg.attack if where == "attack" else getattr(cfg, where.split(".")[0]).attack
        check_attack_section(section, where, cfg.threat.norm)
        if where != "attack" and section.get("clip") is False:
            raise ConfigError(
                f"{where}.clip: false leaves the [0,1] image box (it reproduces the official ELLE training attack); "
                f"validation and evaluation attacks must stay in the threat model: remove {where}.clip."
            )
    from .regularisers import REGULARISERS

    for i, section in enumerate(cfg.regularisers):
        check_section(REGULARISERS, section, f"regularisers[{i}]", cfg.threat.norm)
    _check_objective_and_perturbation(cfg)
    from .training.monitor import ACTIONS

    m = cfg.monitor
    choice("monitor action", m.action, ACTIONS, "monitor.action")
    if m.enabled and cfg.data.val_size < 1:
        raise ConfigError("monitor.enabled needs a held-out validation split: set data.val_size (e.g. 1000 for CIFAR).")
    if not 0.0 < m.false_alarm < 1.0:
        raise ConfigError(f"monitor.false_alarm is a probability per run in (0, 1), e.g. 0.01; got {m.false_alarm}.")
    if m.rules is not None:
        from .training.monitor_rules import build_rule

        for spec in m.rules:
            build_rule(spec)  # unknown rule names and options raise here
    if m.remedy:
        _check_remedy(m.remedy, cfg.threat.norm)
    if m.action == "rollback" and not m.remedy:
        raise ConfigError("monitor.action: rollback needs monitor.remedy, e.g. {kind: lr, factor: 0.5} or {kind: attack, name: nfgsm}.")
    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {cfg.train.epochs}.")
    if cfg.data.batch_size < 1 or cfg.data.eval_batch_size < 1:
        raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1.")
    if cfg.train.amp not in (None, "bf16"):
        raise ConfigError(
            f"train.amp = {cfg.train.amp!r}; expected null (fp32) or bf16 (fp16 would need loss scaling, which "
            "robustrain does not do; bf16 needs none)."
        )
    from .tracking.wandb_logger import MODES

    choice("wandb mode", cfg.wandb.mode, ("auto", *MODES), "wandb.mode")
    if not all(isinstance(t, str) and t for t in cfg.wandb.tags):
        raise ConfigError(f"wandb.tags must be a list of non-empty strings, got {cfg.wandb.tags!r}.")
    choice("optimiser", cfg.optim.name, OPTIMISERS, "optim.name")
    _check_schedule(cfg)
    _check_bn_updates(cfg)
    _check_values(cfg)
    return cfg


def _check_remedy(remedy: dict, norm: str) -> None:
    """A ``monitor.remedy`` section: its kind, then the options of what it builds (an attack, a regulariser) or its
    own (numbers parsed in place)."""
    from .attacks import ATTACKS
    from .regularisers import REGULARISERS
    from .training.remedies import REMEDIES

    kind = remedy.get("kind")
    REMEDIES.check(kind, (), "monitor.remedy")
    rest = {k: v for k, v in remedy.items() if k != "kind"}
    if kind == "attack":
        check_section(ATTACKS, rest, "monitor.remedy", norm, hidden=("loss_fn", "amp_dtype", "bn_mode"))
    elif kind == "regulariser":
        check_section(REGULARISERS, rest, "monitor.remedy", norm)
    else:
        check_section(REMEDIES, remedy, "monitor.remedy", norm)


def _range_error(key: str, value: Any, expected: str, fix: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r}; expected {expected}. {fix}")


#: (key, test, what is expected, how to fix); the test gets the value (None only where the key allows null)
_VALUE_RULES: list[tuple[str, Any, str, str]] = [
    ("data.val_size", lambda v: v >= 0, "an integer >= 0 (0: no validation split, then no best.pt)",
     "Hold out e.g. 1000 for CIFAR-10, 200 for digits."),
    ("data.train_subset", lambda v: v is None or v >= 1, "null (all) or an integer >= 1", "Remove the key to train on all."),
    ("eval.n_ex", lambda v: v is None or v >= 1, "null (the whole test split) or an integer >= 1",
     "Remove the key to evaluate on the whole test split."),
    ("eval.batch_size", lambda v: v >= 1, "an integer >= 1", "e.g. eval.batch_size=500."),
    ("train.grad_clip", lambda v: v is None or (v > 0 and math.isfinite(v)),
     "null (no clipping) or a finite max gradient norm > 0", "A negative norm would make training ascend the loss; "
     "remove the key or set e.g. train.grad_clip=0.5."),
    ("train.label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)", "e.g. train.label_smoothing=0.1."),
    ("train.eps_warmup_epochs", lambda v: 0 <= v and math.isfinite(v), "a number of epochs >= 0", "0 turns it off."),
    ("train.checkpoint_every", lambda v: v >= 0, "an integer >= 0 (steps; 0: at epoch ends only)", "e.g. 500."),
    ("train.log_every", lambda v: v >= 1, "an integer >= 1 (steps)", "e.g. train.log_every=10."),
    ("optim.lr", lambda v: v > 0 and math.isfinite(v), "a finite learning rate > 0", "e.g. optim.lr=0.1."),
    ("optim.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)", "e.g. optim.momentum=0.9 (0: none)."),
    ("optim.weight_decay", lambda v: v >= 0 and math.isfinite(v), "a number >= 0", "e.g. optim.weight_decay=5e-4."),
    ("optim.betas", lambda v: len(v) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                   and 0 <= b < 1 for b in v),
     "two numbers in [0, 1) (Adam's beta1, beta2)", "e.g. optim.betas=[0.9, 0.999]."),
    ("seed", lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)", "e.g. seed=0."),
    ("monitor.n_check", lambda v: v >= 1, "an integer >= 1", "e.g. monitor.n_check=256."),
    ("monitor.pgd_steps", lambda v: v >= 1, "an integer >= 1", "e.g. monitor.pgd_steps=10."),
    ("monitor.every", lambda v: v is None or v >= 1, "null (once per epoch) or an integer >= 1 (steps)",
     "Remove the key to check once per epoch."),
    ("monitor.max_rollbacks", lambda v: v >= 0, "an integer >= 0", "e.g. monitor.max_rollbacks=2."),
    ("monitor.ro_patience", lambda v: v >= 1, "an integer >= 1 (epochs)", "e.g. monitor.ro_patience=1."),
    ("monitor.ro_window", lambda v: v is None or v >= 1, "null or an integer >= 1 (epochs)", "Remove the key for the default."),
]


def _get(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_values(cfg: Config) -> None:
    """Ranges of the numbers training would otherwise accept silently (or fail on after an epoch), the run name,
    the device string and the checkpoint selection metric."""
    for key, ok, expected, fix in _VALUE_RULES:
        value = _get(cfg, key)
        if not ok(value):
            raise _range_error(key, value, expected, fix)
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise ConfigError("optim.nesterov = true needs optim.momentum > 0 (Nesterov momentum without momentum is "
                          "undefined); set optim.momentum=0.9 or optim.nesterov=false.")
    name = cfg.name
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise ConfigError(f"name = {name!r}; expected a non-empty folder name without '/' (the run folder is "
                          "out_dir/name). Set e.g. name=my_run.")
    check_device(cfg.data.device, "data.device")
    metrics = ["val_clean_acc", "val_robust_acc"] + (["val_fgsm_acc"] if cfg.validation.fgsm else [])
    if cfg.validation.select_on not in metrics:
        raise ConfigError(
            f"validation.select_on = {cfg.validation.select_on!r} is not a metric validation reports; expected one "
            f"of: {', '.join(metrics)}." + did_you_mean(cfg.validation.select_on, metrics)
            + (" (val_fgsm_acc needs validation.fgsm: true.)" if cfg.validation.select_on == "val_fgsm_acc" else ""))


def check_device(name: Any, where: str) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` ...: a device string torch understands (whether the device
    exists is checked when it is used)."""
    import torch

    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} = {name!r}; expected auto, cpu, cuda or cuda:N.")
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{where} = {name!r} is not a device; expected auto, cpu, cuda or cuda:N."
                          + did_you_mean(name, ["auto", "cpu", "cuda", "cuda:0", "mps"])
                          + f" (torch: {str(e)[:120]})") from None


def _check_schedule(cfg: Config) -> None:
    """The schedule's own checks (kind, peak, milestones, factors, count_from, at, momenta), run on a stand-in
    length so a bad schedule fails when the config is loaded, not when training starts."""
    from .training.schedules import LRSchedule

    s = cfg.schedule
    milestones = [parse_number(m, f"schedule.milestones[{i}]") for i, m in enumerate(s.milestones)]
    s.milestones = [int(m) if m.is_integer() else m for m in milestones]  # fractions of epochs allowed ("25/2")
    LRSchedule(s.name, cfg.optim.lr, cfg.train.epochs, 1, peak=s.peak, milestones=tuple(milestones), gamma=s.gamma,
               factors=tuple(s.factors), count_from=s.count_from, at=s.at, cycle_momentum=s.cycle_momentum,
               base_momentum=s.base_momentum, max_momentum=s.max_momentum)


def _check_bn_updates(cfg: Config) -> None:
    """``update_bn_stats`` only where the attack runs BatchNorm on batch statistics (the training attack with
    ``bn_mode: train``); validation and evaluation attacks never touch the model's statistics."""
    if cfg.attack.get("update_bn_stats") and cfg.attack.get("bn_mode", "train") == "eval":
        raise ConfigError(
            "attack.update_bn_stats: true needs attack.bn_mode: train (the official Wong / Rice / ELLE / AAER "
            "training attacks run the model in train mode, so their forwards update the BatchNorm running "
            "statistics); in eval mode BatchNorm uses those statistics and has nothing to update. Set "
            "attack.bn_mode: train or remove attack.update_bn_stats."
        )
    for where, section in (("validation.attack", cfg.validation.attack), ("eval.attack", cfg.eval.attack)):
        if section.get("update_bn_stats"):
            raise ConfigError(f"{where}.update_bn_stats: validation and evaluation attacks run the model in eval "
                              f"mode and never change its BatchNorm statistics; remove {where}.update_bn_stats.")
        if section.get("first_batch_bn_mode") is not None:
            raise ConfigError(f"{where}.first_batch_bn_mode is a training-attack option (the first batch of each "
                              f"epoch); validation and evaluation attacks always run in eval mode: remove it.")
    from .attacks.base import BN_MODES

    if cfg.attack.get("first_batch_bn_mode") not in (None, *BN_MODES):
        raise ConfigError(f"attack.first_batch_bn_mode = {cfg.attack['first_batch_bn_mode']!r}; expected null, eval "
                          "or train (eval: the AWP / RWP loops' first batch of every epoch after the first).")


# -- loading --------------------------------------------------------------------------------------------
DEFAULTS_KEY = "defaults"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.subkey=value, e.g. train.epochs=3.")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({e}).") from e
    return key.strip().split("."), value


def merge_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def _chain_text(chain: tuple[Path, ...]) -> str:
    return " -> ".join(str(p) for p in chain)


def _read_yaml_mapping(path: Path, chain: tuple[Path, ...]) -> dict:
    via = f" (defaults chain: {_chain_text(chain)})" if len(chain) > 1 else ""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r}{via} is not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r}{via} is not a text file ({e.reason}); give a YAML recipe.") from e
    if data is None:
        raise ConfigError(
            f"config file {str(path)!r}{via} is empty (no keys). Start from a recipe in configs/, e.g. "
            "configs/quickstart_digits.yaml, or list what you change over one: defaults: [quickstart_digits.yaml].")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}{via} must hold a mapping of keys, got {type(data).__name__}.")
    return data


def _leaf_origins(data: Any, source: str, prefix: str, origin: dict[str, str]) -> None:
    """Record ``source`` for every leaf key path of ``data`` (lists and scalars are leaves)."""
    if isinstance(data, dict) and data:
        for key, value in data.items():
            _leaf_origins(value, source, f"{prefix}.{key}" if prefix else str(key), origin)
    elif prefix:
        origin[prefix] = source


def _forget(origin: dict[str, str], path: str) -> None:
    for key in [k for k in origin if k == path or k.startswith(path + ".")]:
        del origin[key]


def _deep_merge(target: dict, t_origin: dict[str, str], over: dict, o_origin: dict[str, str], prefix: str = "") -> None:
    """Merge ``over`` into ``target`` in place: mappings merge key by key, lists and scalars replace.
    The origins (key path -> file) follow the values."""
    import copy

    for key, value in over.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], t_origin, value, o_origin, path)
            continue
        target[key] = copy.deepcopy(value)
        _forget(t_origin, path)
        t_origin.update({k: v for k, v in o_origin.items() if k == path or k.startswith(path + ".")})


def _read_recipe(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    """The file's keys over its ``defaults:`` files (each resolved the same way, merged in order), and the file
    each key path comes from."""
    chain = (*chain, path)
    data = _read_yaml_mapping(path, chain)
    bases = data.pop(DEFAULTS_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b.strip() for b in bases):
        raise ConfigError(
            f"{str(path)!r}: defaults must be a list of YAML files relative to the file's folder, e.g. "
            f"defaults: [base/cifar10.yaml]; got {bases!r}"
            + (f" (defaults chain: {_chain_text(chain)})." if len(chain) > 1 else ".")
        )
    merged: dict = {}
    origin: dict[str, str] = {}
    for entry in bases:
        base = path.parent / entry
        if any(base.resolve() == p.resolve() for p in chain):
            raise ConfigError(
                f"defaults form a cycle: {_chain_text((*chain, base))}; a file cannot build on itself or on a file "
                f"that builds on it. Remove {entry!r} from the defaults of {str(path)!r}."
            )
        if not base.is_file():
            siblings = sorted(str(p.relative_to(path.parent)) for p in path.parent.glob("**/*.yaml"))
            raise ConfigError(
                f"defaults entry {entry!r} of {str(path)!r}: {str(base)!r} does not exist (defaults chain: "
                f"{_chain_text((*chain, base))}); paths are relative to the folder of the file that lists them."
                + did_you_mean(entry, siblings)
            )
        base_data, base_origin = _read_recipe(base, chain)
        _deep_merge(merged, origin, base_data, base_origin)
    own: dict[str, str] = {}
    _leaf_origins(data, str(path), "", own)
    _deep_merge(merged, origin, data, own)
    return merged, origin


def read_recipe(path: str | Path) -> dict:
    """A recipe's keys with its ``defaults:`` files merged in (no ``defaults`` key, no overrides, not validated):
    each entry of ``defaults: [base/cifar10.yaml, ...]`` (relative to the recipe's folder, resolved the same way)
    is merged in order, mappings key by key and lists and scalars replaced, then the recipe's own keys."""
    return _read_recipe(Path(path), ())[0]


def _origin_note(message: str, origin: dict[str, str], recipe: str) -> str:
    """Which base file set the keys an error names (keys from the recipe itself or an override get no note)."""
    import re

    notes: dict[str, str] = {}
    for token in re.findall(r"'([^'\s]+)'|([A-Za-z_]\w*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)+)", message):
        key = re.sub(r"\[\d+\]", "", token[0] or token[1])
        while key and key not in origin:
            key = key.rpartition(".")[0]
        if key and origin[key] != recipe:
            notes.setdefault(key, origin[key])
    return " ".join(f"[{key} is set in {src}, a defaults file of {recipe}.]" for key, src in notes.items())


#: the bundled recipes (``configs/`` of the repository: ``robustrain/recipes`` is a link to it, installed as package data)
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def bundled_recipes() -> list[Path]:
    """The bundled recipes: the YAML files directly in :data:`RECIPES_DIR` (not ``base/``, not ``sweeps/``)."""
    return sorted(RECIPES_DIR.glob("*.yaml"))


def _header_sentence(text: str, width: int) -> str:
    """The first sentence of a recipe's header comment, cut to ``width`` characters."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    header = " ".join(lines)
    end = next((i + 1 for i, ch in enumerate(header) if ch == "." and header[i + 1:i + 2] in (" ", "")), len(header))
    sentence = header[:end].rstrip(".")
    return sentence if len(sentence) <= width else sentence[:width - 1].rstrip() + "…"


def recipe_summaries(width: int = 90) -> dict[str, str]:
    """``{recipe name: one line}`` for every bundled recipe: dataset, method (attack + regularisers / weight
    perturbation / objective), radius and epochs as the recipe resolves them, then its header's first sentence."""
    out = {}
    for path in bundled_recipes():
        try:
            data = read_recipe(path)
        except ConfigError as e:  # pragma: no cover - every bundled recipe resolves (tests/test_recipes_resolve.py)
            out[path.stem] = f"(does not resolve: {e})"
            continue
        method = [str((data.get("attack") or {}).get("name", "fgsm_rs"))]
        method += [str(r.get("name")) for r in data.get("regularisers") or [] if isinstance(r, dict)]
        for key in ("weight_perturbation", "objective"):
            section = data.get(key) or {}
            if isinstance(section, dict) and section.get("name") not in (None, "ce", *method):
                method.append(str(section["name"]))
        threat, train = data.get("threat") or {}, data.get("train") or {}
        facts = (f"{(data.get('data') or {}).get('name', 'digits'):<13} {'+'.join(method):<22} "
                 f"{threat.get('norm', 'linf')} {str(threat.get('eps', '8/255')):<7} {train.get('epochs', 15):>3} ep")
        out[path.stem] = f"{facts}  {_header_sentence(path.read_text(), width)}"
    return out


def find_recipe(name: str | Path) -> Path:
    """The recipe file ``name`` names: an existing file, else a bundled recipe by name (``cifar10_fgsm_rs``, with or
    without ``.yaml``), so ``robustrain train -c cifar10_fgsm_rs`` works from any folder."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name[:-4] if path.name.endswith(".yml") else path.name
    bundled = RECIPES_DIR / f"{stem}.yaml"
    if len(path.parts) == 1 and bundled.is_file():
        return bundled
    names = [p.stem for p in bundled_recipes()]
    hint = f" The bundled recipe {stem!r} has that name: use -c {stem}." if bundled.is_file() else ""
    raise ConfigError(
        f"config file {str(path)!r} does not exist and is not the name of a bundled recipe.{hint}"
        + ("" if hint else did_you_mean(stem, names))
        + " `robustrain recipes` lists the bundled recipes; give one by name (e.g. quickstart_digits) or a YAML path.")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (a file, or a bundled recipe by name: :func:`find_recipe`; the defaults when ``path`` is
    None) with its ``defaults:`` files merged in (:func:`read_recipe`), apply ``key=value`` overrides, validate.
    Errors about a key a defaults file set name that file."""
    data: dict = {}
    origin: dict[str, str] = {}
    recipe = ""
    if path is not None:
        path = find_recipe(path)
        data, origin = _read_recipe(path, ())
        recipe = str(path)
    for item in overrides:
        keys, value = parse_override(item)
        if keys[0] == DEFAULTS_KEY:
            raise ConfigError(f"override {item!r}: defaults are read from the recipe file before any override; "
                              "list the base files in the recipe (defaults: [base/cifar10.yaml]) or use another -c.")
        merge_override(data, keys, value)
        _forget(origin, ".".join(keys))
    try:
        return validate(_build(Config, data, ""))
    except ConfigError as e:
        note = _origin_note(str(e), origin, recipe)
        if note:
            raise ConfigError(f"{e} {note}") from e
        raise


def to_dict(cfg: Config) -> dict:
    """Plain data (for YAML, JSON and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    return validate(_build(Config, data, ""))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
