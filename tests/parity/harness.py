"""Parity harness: a shipped recipe, run through robustrain, against a minimal re-implementation of the method's
official training loop, on the same batches, from the same initial weights, with the same random draws.

What a parity case is (one module ``tests/parity/case_<name>.py`` per recipe; ``test_parity.py`` collects them and
``scripts/parity_table.py`` writes ``results/parity/official_recipes.md`` from them):

* ``CASE = Case(recipe=..., official="owner/repo path@commit", behaviour=..., by_design=..., run=run)``, where
  ``run() -> CaseResult`` (usually ``return compare(case, ours, ref)``). ``by_design`` says, in a sentence, what the
  reference loop leaves out or what differs on purpose (normalisation placement, fp32 instead of apex, ...).
* The reference loop is written from reading the official script (never copied). It takes
  ``ours.initial_model`` (a deep copy of robustrain's model before training: same weights, same BatchNorm buffers,
  same normalisation layer), the same ``batches``, builds its own optimiser and scheduler as the official script
  does (``torch.optim.lr_scheduler.CyclicLR`` where the script uses it, the script's own lr function otherwise)
  and draws its random numbers from ``trainer_generator(seed)``: the generator robustrain's ``Trainer`` seeds
  (``rank_seed(seed, 0)``), in robustrain's order. Where the two loops cannot share draws, the case injects
  them (e.g. wraps the attack's ``start``).

API:

``parity_batches(dataset, n_batches, batch_size, seed=0, augment=True) -> list[(x, y)]``
    Real data, fixed batches: ``cifar10`` (``data_batch_1.bin`` of the binary version: ``$ROBUSTRAIN_CIFAR10`` or
    ``data/cifar10`` of the checkout or the copy tests/test_data.py builds in pytest's cache, else built with
    ``../shared/data/get_cifar10.py`` into
    ``~/.cache/robustrain/cifar10``; the test skips when none can be had) or ``mnist`` (``train-images-idx3-ubyte.gz``
    of ``$ROBUSTRAIN_SHARED_DATA/mnist``, ``../shared/data/mnist`` or ``/work/shared/data/mnist``). Images are drawn
    with a seeded permutation, float in [0, 1]. ``augment`` (CIFAR-10 only) pre-applies one random crop (pad 4)
    + flip per image with a seeded generator, so every epoch sees the same, already augmented tensors: the recipe's
    ``data.augment`` is switched off and both loops get identical inputs.

``robustrain_run(recipe, batches, *, epochs, overrides=(), seed=0) -> RobustrainRun``
    Loads ``configs/<recipe>.yaml`` with ``robustrain.config.load_config`` and the overrides (a dict or
    ``key=value`` strings; the harness adds ``train.epochs``, ``data.augment: null``, ``data.val_size: 0``,
    ``data.device: cpu``, no progress bar / monitor / wandb), builds the Trainer with
    ``robustrain.build.build_trainer`` on a loader that yields exactly ``batches`` every epoch (so
    ``steps_per_epoch = len(batches)`` and the schedule sees the recipe's real shape, total = epochs × batches),
    replaces the callbacks by a recorder of every step's logs (``lr``, ``momentum`` when logged, losses), and trains.
    Returns the config, the trainer, ``initial_model`` (deep copy before training), ``initial_state``,
    ``final_state`` and ``logs``. Shrink the model through ``overrides`` (e.g. ``{"model.kwargs": {"width": 4}}``).

``trainer_generator(seed=0) -> torch.Generator``
    A CPU generator seeded exactly as robustrain's Trainer seeds its own.

``uniform(shape_like, radius, generator)``
    ``U[-radius, radius]`` drawn as robustrain's L∞ ball sampler draws it (``torch.rand`` from the generator, then
    ``u·2r − r``): the same numbers the official ``delta.uniform_(-ε, ε)`` stands for.

``box(x, delta)``
    The box clip of δ with robustrain's float rounding (see its docstring for why rounding must agree).

``max_rel_diff(a_state, b_state, keys=None) -> (value, key)``
    ``max over tensors t of max|a_t − b_t| / max|b_t|`` (``b`` = the reference; a tensor whose reference is all zero
    uses the absolute difference), over floating tensors; integer buffers (``num_batches_tracked``) must be equal
    (``inf`` otherwise). ``compare_states`` splits it into parameters and buffers.

``compare(case, ours, ref_model, *, steps, extra=None, buffers_by_design=None) -> CaseResult``
    The case's result: ``weights`` (parameters) and ``buffers`` (BatchNorm running statistics and counters) relative
    differences. ``buffers_by_design``: a sentence when the official loop's extra forward passes update the
    BatchNorm statistics in a way robustrain does not reproduce (then the buffers are reported, not asserted).

``recipe_constants(recipe, expected) -> list[str]``
    The unshrunk recipe's settings (epochs, batch size, lr, milestones, ε, α, ...) that differ from the official
    script's defaults; pass them as ``compare(constants=...)``: the test fails on any.

``recipe_hint(condition, text)``
    ``text`` when ``condition`` is false (a recipe setting the official loop needs), for ``compare(hints=...)``.

``robustrain_run(..., lockstep=factory)`` / ``compare_lockstep(case, ours)`` / ``run_reference(gen)``
    Lockstep mode for training that is chaotic at the float level (see :class:`Lockstep`): ``factory(new_model,
    cfg)`` returns ``{"official": (model, generator), ["aligned": ...]}`` where each generator is the official loop
    yielding its optimiser after every step (``new_model()`` gives a fresh copy of the initial model). Each official
    step then starts from robustrain's exact state; the values reported are maxima over the steps.

``assert_parity(result)``
    Fails, with the worst tensor named, when ``weights > TOL`` or ``buffers > TOL``; a buffer difference declared
    ``buffers_by_design`` must vanish in the ``aligned_model`` run (the official loop without those forwards).

``require(condition, why)``
    Inside ``run``: raises ``ParityUnsupported(why)`` (the test fails with that message, the table says why) when
    robustrain lacks an option the official loop needs.

Speed: each case trains a tiny model (e.g. PreActResNet-18 of width 4, the small MNIST CNN) for >= 20 steps on
batches of 16–32 images; keep a case to a few seconds on 2 cores (``OMP_NUM_THREADS=1``).
"""
from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
TOL = 1e-5

Batch = tuple[Tensor, Tensor]


class ParityUnsupported(AssertionError):
    """robustrain cannot (yet) express what the official loop does; the message says what is missing."""


class DataUnavailable(RuntimeError):
    """The data a case needs is not on this machine (the test skips)."""


def recipe_hint(condition: Any, text: str) -> str:
    return "" if condition else text


def recipe_constants(recipe: str, expected: Mapping[str, Any]) -> list[str]:
    """The settings of the *unshrunk* ``configs/<recipe>.yaml`` that differ from the official script's defaults
    (``expected``: dotted keys such as ``train.epochs``, ``attack.step``, ``schedule.milestones``; numbers compared
    to 1e-9 relative), as sentences. The shrunk parity run overrides epochs and milestones, so these are checked here.
    """
    from robustrain.config import load_config

    cfg = load_config(CONFIGS / f"{recipe}.yaml")
    out = []
    for key, want in expected.items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else getattr(node, part, None)
        got = node
        same = got == want
        if not same and isinstance(want, (int, float)) and isinstance(got, (int, float)) and not isinstance(got, bool):
            same = abs(float(got) - float(want)) <= 1e-9 * max(abs(float(want)), 1.0)
        if not same and isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
            same = len(got) == len(want) and all(
                (a == b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                             and abs(float(a) - float(b)) <= 1e-9 * max(abs(float(b)), 1.0))
                for a, b in zip(got, want))
        if not same:
            out.append(f"{recipe}.yaml {key} = {got!r}, the official script uses {want!r}")
    return out


def require(condition: Any, why: str) -> None:
    if not condition:
        raise ParityUnsupported(why)


# ------------------------------------------------------------------------------------------------- data
def _shared_data() -> Path | None:
    for c in (os.environ.get("ROBUSTRAIN_SHARED_DATA"), REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if c and Path(c).is_dir():
            return Path(c)
    return None


def cifar10_batches_bin() -> Path:
    """The folder ``cifar-10-batches-bin`` (see the module docstring for where it is looked for)."""
    candidates = [os.environ.get("ROBUSTRAIN_CIFAR10"), REPO / "data" / "cifar10",
                  REPO / ".pytest_cache" / "d" / "robustrain_cifar10",  # where tests/test_data.py builds it
                  Path.home() / ".cache" / "robustrain" / "cifar10"]
    for c in candidates:
        if c and (Path(c) / "cifar-10-batches-bin" / "data_batch_1.bin").is_file():
            return Path(c) / "cifar-10-batches-bin"
    shared = _shared_data()
    script = shared / "get_cifar10.py" if shared else None
    if script is None or not script.is_file():
        raise DataUnavailable("CIFAR-10 binary files not found and ../shared/data/get_cifar10.py is missing")
    cache = Path.home() / ".cache" / "robustrain" / "cifar10"
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, str(script), str(cache)], capture_output=True, text=True)
    if done.returncode != 0 or not (cache / "cifar-10-batches-bin" / "data_batch_1.bin").is_file():
        raise DataUnavailable(f"building CIFAR-10 with {script} failed: {done.stderr.strip()[-300:]}")
    return cache / "cifar-10-batches-bin"


def _cifar10_raw() -> tuple[np.ndarray, np.ndarray]:
    rows = np.fromfile(cifar10_batches_bin() / "data_batch_1.bin", np.uint8).reshape(-1, 3073)
    return rows[:, 1:].reshape(-1, 3, 32, 32), rows[:, 0].astype(np.int64)


def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    shared = _shared_data()
    folder = shared / "mnist" if shared else None
    if folder is None or not (folder / "train-images-idx3-ubyte.gz").is_file():
        raise DataUnavailable("MNIST files not found (../shared/data/mnist/train-images-idx3-ubyte.gz)")
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def _crop_flip(x: Tensor, gen: torch.Generator, pad: int = 4) -> Tensor:
    """One random crop of the zero-padded image and a horizontal flip with probability 1/2, per image."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
    flips = torch.rand(b, generator=gen) < 0.5
    out = torch.stack([padded[i, :, offs[i, 0]:offs[i, 0] + h, offs[i, 1]:offs[i, 1] + w] for i in range(b)])
    out[flips] = out[flips].flip(-1)
    return out


def parity_batches(dataset: str, n_batches: int, batch_size: int, seed: int = 0, augment: bool = True) -> list[Batch]:
    """``n_batches`` fixed batches of ``batch_size`` real images in [0, 1] (see the module docstring)."""
    if dataset == "cifar10":
        images, labels = _cifar10_raw()
    elif dataset == "mnist":
        images, labels = _mnist_raw()
        augment = False  # Wong's MNIST script does not augment
    else:
        raise ValueError(f"parity_batches: dataset must be cifar10 or mnist, got {dataset!r}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(labels), generator=gen)[: n_batches * batch_size].numpy()
    x = torch.from_numpy(images[idx].astype(np.float32) / 255.0)
    y = torch.from_numpy(labels[idx])
    if augment:
        x = _crop_flip(x, gen)
    return [(x[i * batch_size:(i + 1) * batch_size].contiguous(), y[i * batch_size:(i + 1) * batch_size].clone())
            for i in range(n_batches)]


class FixedLoader:
    """Yields the same batches (fresh copies) in every epoch: the ``BatchLoader`` interface the Trainer uses."""

    def __init__(self, batches: Sequence[Batch]):
        self.batches = list(batches)
        self.batch_size = len(self.batches[0][1])

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(0)

    @property
    def dataset(self) -> Sequence[int]:
        """The examples, numbered batch by batch (only its length is read: attacks with per-example state size
        their buffers by it)."""
        return range(sum(len(y) for _, y in self.batches))

    def iterate(self, epoch: int, start_batch: int = 0, *, with_indices: bool = False) -> Iterator[Batch]:
        """With ``with_indices`` (``fgsm_mep``) each batch also carries its examples' indices: example ``j`` of batch
        ``i`` is ``i·batch_size + j`` in every epoch (the batches are fixed)."""
        for i, (x, y) in enumerate(self.batches[start_batch:], start=start_batch):
            if with_indices:
                yield x.clone(), y.clone(), torch.arange(i * self.batch_size, i * self.batch_size + len(y))
            else:
                yield x.clone(), y.clone()


def _info(dataset: str, batches: Sequence[Batch]):
    from robustrain.data import ArrayDataset

    if dataset == "cifar10":
        from robustrain.data.cifar import CIFAR10_MEAN as mean, CIFAR10_STD as std
    else:
        from robustrain.data.mnist import MNIST_MEAN as mean, MNIST_STD as std
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return ArrayDataset(images=(x * 255).round().to(torch.uint8), labels=y, num_classes=10, mean=tuple(mean),
                        std=tuple(std), name=dataset)


# -------------------------------------------------------------------------------------------- robustrain
class StepRecorder:
    """Keeps every step's logs (lr, momentum, losses) and the trainer's step/epoch at each."""

    every_rank = False
    state_key = "StepRecorder"

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    lockstep: "Lockstep | None" = None

    def on_batch_end(self, trainer, logs):
        self.logs.append({**logs, "step": trainer.step, "epoch": trainer.epoch})
        if self.lockstep is not None:
            self.lockstep.step(trainer)

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def state_dict(self) -> dict:
        return {}


@dataclass
class RobustrainRun:
    cfg: Any
    trainer: Any
    initial_model: nn.Module
    initial_state: dict[str, Tensor]
    final_state: dict[str, Tensor]
    logs: list[dict[str, float]]
    steps: int
    lockstep: "Lockstep | None" = None


def _override_list(overrides: Mapping[str, Any] | Iterable[str]) -> list[str]:
    if isinstance(overrides, Mapping):
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return list(overrides)


def load_recipe(recipe: str, overrides: Mapping[str, Any] | Iterable[str] = (), *, epochs: int):
    """``configs/<recipe>.yaml`` with the harness's shrinking overrides, then the case's."""
    from robustrain.config import load_config

    base = {"train.epochs": epochs, "data.augment": None, "data.val_size": 0, "data.device": "cpu",
            "train.progress": False, "train.checkpoint_every": 0, "train.log_every": 1, "monitor.enabled": False,
            "wandb.mode": "disabled", "validation.fgsm": False}
    return load_config(CONFIGS / f"{recipe}.yaml", _override_list(base) + _override_list(overrides))


def robustrain_run(recipe: str, batches: Sequence[Batch], *, epochs: int,
                   overrides: Mapping[str, Any] | Iterable[str] = (), dataset: str = "cifar10",
                   lockstep: Callable[[nn.Module, Any], Mapping[str, Iterator]] | None = None) -> RobustrainRun:
    """Train ``configs/<recipe>.yaml`` (shrunk) through robustrain's own builder on exactly ``batches``.

    ``lockstep(initial_model_copy_factory, cfg)``: see :class:`Lockstep`; it returns named reference generators
    that this run advances one official step after each robustrain step."""
    from robustrain.build import Data, build_trainer

    cfg = load_recipe(recipe, overrides, epochs=epochs)
    loader = FixedLoader(batches)
    data = Data(train=loader, val=None, test=loader, info=_info(dataset, batches))
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = build_trainer(cfg, Path(tmp), data)
        recorder = StepRecorder()
        trainer.callbacks = [recorder]  # parity is about the weights: no files, loggers or trackers
        trainer.model.train()
        initial_model = copy.deepcopy(trainer.model)
        initial_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        if lockstep is not None:
            recorder.lockstep = Lockstep(lockstep(lambda: copy.deepcopy(initial_model), cfg))
        trainer.fit()
        if lockstep is not None:
            recorder.lockstep.finish()
    final_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    run = RobustrainRun(cfg, trainer, initial_model, initial_state, final_state, recorder.logs, trainer.step)
    run.lockstep = recorder.lockstep if lockstep is not None else None
    return run


class Lockstep:
    """Official loops advanced one step per robustrain step, compared, then re-synchronised to robustrain's state.

    For methods whose training is chaotic at the float level (TRADES: near x the KL gradient is so small that the
    first signed step of every attack follows the last bit of the weights), a free-running comparison measures
    float noise amplified to O(1) within a few steps, not the method. In lockstep mode every official step starts
    from robustrain's exact state (weights, BatchNorm buffers, optimiser state: momentum buffers / Adam moments),
    runs the official code's own attack, loss, lr and update, and the difference after that one step is recorded;
    the reported value is the maximum over all steps. Each reference is a generator (the official loop with
    ``yield optimizer`` after each ``optimizer.step()``, returning its schedule); its random draws come from its
    own ``trainer_generator`` and are never synchronised.
    """

    def __init__(self, refs: Mapping[str, tuple[nn.Module, Iterator]]):
        self.refs = dict(refs)
        self.diffs: dict[str, list[tuple[float, str, float, str]]] = {name: [] for name in self.refs}
        self.schedules: dict[str, Any] = {}
        self.running_stats: dict[str, list[float]] = {name: [] for name in self.refs}

    def step(self, trainer) -> None:
        ours = trainer.model
        state = ours.state_dict()
        stats = [k for k in state if k.endswith(("running_mean", "running_var"))]
        for name, (model, gen) in self.refs.items():
            opt = next(gen)
            ref_state = model.state_dict()
            self.diffs[name].append(compare_states(state, ref_state, ours))
            self.running_stats[name].append(max_rel_diff(state, ref_state, stats)[0] if stats else 0.0)
            model.load_state_dict(state)
            for p_ref, p_ours in zip(model.parameters(), ours.parameters()):
                opt.state[p_ref] = {k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v))
                                    for k, v in trainer.optimizer.state.get(p_ours, {}).items()}

    def finish(self) -> None:
        for name, (_, gen) in self.refs.items():
            try:
                next(gen)
            except StopIteration as stop:
                self.schedules[name] = stop.value
            else:
                raise AssertionError(f"the official loop '{name}' has more steps than robustrain's run")

    def worst(self, name: str) -> tuple[float, str, float, str]:
        d = self.diffs[name]
        w = max(d, key=lambda t: t[0])
        b = max(d, key=lambda t: t[2])
        return w[0], w[1], b[2], b[3]


def run_reference(gen: Iterator) -> Any:
    """Run a generator-form official loop to its end (free-running) and return its return value (the schedule)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def trainer_generator(seed: int = 0) -> torch.Generator:
    """The CPU generator robustrain's Trainer draws attack noise and regulariser draws from."""
    from robustrain.training.parallel import rank_seed

    return torch.Generator(device="cpu").manual_seed(rank_seed(seed, 0))


def uniform(like: Tensor, radius: float, generator: torch.Generator) -> Tensor:
    """``U[-radius, radius]`` with the shape of ``like``, drawn from ``generator`` as robustrain draws it."""
    u = torch.rand(like.shape, generator=generator, dtype=torch.float32)
    return u * (2 * radius) - radius


def box(x: Tensor, delta: Tensor) -> Tensor:
    """δ clipped so that x + δ lies in [0, 1], computed as ``(x + δ).clamp(0, 1) − x``: robustrain's float rounding
    of the clip the official scripts write as ``clamp(δ, −x, 1 − x)`` (in normalised units for Wong / N-FGSM).
    The two differ by one rounding; a single-step attack's sign(∇) turns such a difference into a different pixel,
    and at lr 0.2 a width-4 network amplifies it to 1e-2 in four steps, so parity needs bit-identical inputs."""
    return (x + delta).clamp(0.0, 1.0) - x


def cyclic_sgd(model: nn.Module, total: int, lr_max: float, momentum: float, weight_decay: float
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.CyclicLR]:
    """The optimiser of the official single-step CIFAR scripts (Wong's train_fgsm.py, N-FGSM, AAER, LAP, ELLE):
    SGD(lr_max, momentum, weight decay) driven by torch's CyclicLR(base 0, max lr_max, up = down = total / 2) with its
    default momentum cycling, stepped once after every optimiser step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.0, max_lr=lr_max, step_size_up=total / 2,
                                              step_size_down=total / 2)
    return opt, sched


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def has_input_normalisation(model: nn.Module) -> bool:
    """Whether the model normalises its inputs (a Normalise layer other than mean 0, std 1)."""
    from robustrain.models.normalise import Normalise

    for m in model.modules():
        if isinstance(m, Normalise):
            if bool((m.mean != 0).any()) or bool((m.std != 1).any()):
                return True
    return False


# -------------------------------------------------------------------------------------------- comparison
def max_rel_diff(a: Mapping[str, Tensor], b: Mapping[str, Tensor], keys: Iterable[str] | None = None
                 ) -> tuple[float, str]:
    """max over tensors of max|a − b| / max|b| (b the reference); integer tensors must be equal."""
    worst, worst_key = 0.0, ""
    for k in (keys if keys is not None else b.keys()):
        ta, tb = a[k].detach().cpu(), b[k].detach().cpu()
        if ta.shape != tb.shape:
            return float("inf"), f"{k} (shape {tuple(ta.shape)} vs {tuple(tb.shape)})"
        if not torch.is_floating_point(tb):
            d = 0.0 if torch.equal(ta, tb) else float("inf")
        else:
            ta, tb = ta.double(), tb.double()
            scale = tb.abs().max().item() if tb.numel() else 0.0
            diff = (ta - tb).abs().max().item() if tb.numel() else 0.0
            d = diff / scale if scale > 0 else diff
        if d > worst or not worst_key:
            worst, worst_key = d, k
    return worst, worst_key


def compare_states(ours: Mapping[str, Tensor], ref: Mapping[str, Tensor], model: nn.Module
                   ) -> tuple[float, str, float, str]:
    """(weights diff, worst parameter, buffers diff, worst buffer) between two state dicts of ``model``."""
    params = [k for k, _ in model.named_parameters()]
    buffers = [k for k in ref if k not in set(params)]
    w, wk = max_rel_diff(ours, ref, params)
    b, bk = max_rel_diff(ours, ref, buffers) if buffers else (0.0, "")
    return w, wk, b, bk


@dataclass
class Case:
    recipe: str
    official: str  # "owner/repo path@commit"
    behaviour: str  # which behaviour of the official code the recipe follows (code / paper / what)
    by_design: str  # what differs on purpose (a sentence)
    run: Callable[[], "CaseResult"]
    name: str = ""


@dataclass
class CaseResult:
    case: Case
    steps: int
    weights: float
    weights_key: str
    buffers: float
    buffers_key: str
    buffers_by_design: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.weights <= TOL and (self.buffers <= TOL or self.buffers_by_design is not None) and self.steps >= 20


def schedule_mismatch(logs: Sequence[Mapping[str, float]], ref: Sequence[tuple[float, float | None]]) -> str | None:
    """The first step whose lr (or momentum / Adam β1, where robustrain logs it) differs from the reference's
    ``(lr, momentum)`` of that step, as a sentence; None when they agree (relative 1e-6)."""
    if len(logs) != len(ref):
        return f"robustrain took {len(logs)} steps, the official loop {len(ref)}"
    for i, (log, (lr, mom)) in enumerate(zip(logs, ref)):
        if abs(log["lr"] - lr) > 1e-6 * max(abs(lr), 1e-12):
            return f"step {i}: lr {log['lr']:.6g} in robustrain, {lr:.6g} in the official loop"
        if mom is not None:
            if "momentum" not in log:
                return f"step {i}: robustrain does not log the momentum (official {mom:.6g})"
            if abs(log["momentum"] - mom) > 1e-6:
                return f"step {i}: momentum {log['momentum']:.6g} in robustrain, {mom:.6g} in the official loop"
    return None


def optimizer_schedule(opt: torch.optim.Optimizer) -> tuple[float, float | None]:
    """The (lr, momentum or Adam β1) the optimiser's first group will step with now."""
    g = opt.param_groups[0]
    mom = g["betas"][0] if "betas" in g else g.get("momentum")
    return float(g["lr"]), (None if mom is None else float(mom))


def compare(case: Case, ours: RobustrainRun, ref_model: nn.Module, *, ref_schedule: Sequence | None = None,
            extra: dict[str, Any] | None = None, buffers_by_design: str | None = None,
            aligned_model: nn.Module | None = None, hints: Sequence[str] = (),
            constants: Sequence[str] = ()) -> CaseResult:
    """The result of a case: ``ref_schedule`` is the official loop's (lr, momentum) at every step (see
    :func:`optimizer_schedule`), checked against robustrain's logs to say *why* weights differ; ``hints`` are
    known recipe gaps (e.g. a missing option), shown when the comparison fails. With ``buffers_by_design``, pass
    ``aligned_model``: the official loop run again without the forwards robustrain does not repeat; its weights and
    buffers must then agree with robustrain's (this proves that the by-design difference is the only one)."""
    ref_state = {k: v.detach().clone() for k, v in ref_model.state_dict().items()}
    w, wk, b, bk = compare_states(ours.final_state, ref_state, ours.trainer.model)
    moved, _ = max_rel_diff(ours.final_state, ours.initial_state, [k for k, _ in ours.trainer.model.named_parameters()])
    info = {"moved": moved, "hints": [h for h in hints if h], "constants": list(constants), **(extra or {})}
    if ref_schedule is not None:
        info["schedule"] = schedule_mismatch(ours.logs, ref_schedule)
    if aligned_model is not None:
        aw, awk, ab, abk = compare_states(ours.final_state, aligned_model.state_dict(), ours.trainer.model)
        info["aligned"] = {"weights": aw, "weights_key": awk, "buffers": ab, "buffers_key": abk}
    if buffers_by_design is not None:
        run_stats = [k for k in ref_state if k.endswith(("running_mean", "running_var"))]
        info["running_stats"] = max_rel_diff(ours.final_state, ref_state, run_stats)[0] if run_stats else 0.0
    return CaseResult(case, ours.steps, w, wk, b, bk, buffers_by_design, info)


def compare_lockstep(case: Case, ours: RobustrainRun, *, buffers_by_design: str | None = None,
                     hints: Sequence[str] = (), constants: Sequence[str] = ()) -> CaseResult:
    """The result of a lockstep run (see :class:`Lockstep`): the reference named ``official`` gives the weights and
    buffers values (maxima over the steps); one named ``aligned`` (the official loop without the forwards robustrain
    does not repeat) backs a ``buffers_by_design`` claim."""
    ls = ours.lockstep
    w, wk, b, bk = ls.worst("official")
    moved, _ = max_rel_diff(ours.final_state, ours.initial_state, [k for k, _ in ours.trainer.model.named_parameters()])
    info: dict[str, Any] = {"moved": moved, "hints": [h for h in hints if h], "constants": list(constants),
                            "mode": "lockstep",
                            "schedule": schedule_mismatch(ours.logs, ls.schedules["official"])}
    if "aligned" in ls.refs:
        aw, awk, ab, abk = ls.worst("aligned")
        info["aligned"] = {"weights": aw, "weights_key": awk, "buffers": ab, "buffers_key": abk}
    if buffers_by_design is not None:
        info["running_stats"] = max(ls.running_stats["official"])
    return CaseResult(case, ours.steps, w, wk, b, bk, buffers_by_design, info)


def assert_parity(result: CaseResult) -> None:
    assert result.steps >= 20, f"{result.case.recipe}: only {result.steps} optimiser steps (need >= 20)"
    assert result.extra.get("moved", 1.0) > 1e-3, (
        f"{result.case.recipe}: the weights barely moved ({result.extra.get('moved')}); the comparison says nothing")
    assert not result.extra.get("constants"), (
        f"{result.case.recipe}: the recipe differs from the official script's settings: "
        + "; ".join(result.extra["constants"]))
    why = f"; schedule: {result.extra['schedule']}" if result.extra.get("schedule") else ""
    why += "".join(f"; {h}" for h in result.extra.get("hints", []))
    what = ("weights after one official step (lockstep, max over the steps)" if result.extra.get("mode") == "lockstep"
            else "final weights")
    assert result.weights <= TOL, (
        f"{result.case.recipe}: {what} differ from the official loop's by {result.weights:.3g} (relative, "
        f"worst tensor {result.weights_key}); tolerance {TOL}{why}")
    aligned = result.extra.get("aligned")
    if result.buffers_by_design is not None:
        assert aligned is not None, (
            f"{result.case.recipe}: a by-design buffer difference needs the aligned reference run")
        assert aligned["weights"] <= TOL and aligned["buffers"] <= TOL, (
            f"{result.case.recipe}: without the official loop's extra forwards the reference still differs (weights "
            f"{aligned['weights']:.3g} at {aligned['weights_key']}, buffers {aligned['buffers']:.3g} at "
            f"{aligned['buffers_key']}): the by-design explanation is not the whole difference{why}")
    else:
        assert result.buffers <= TOL, (
            f"{result.case.recipe}: BatchNorm buffers differ from the official loop's by {result.buffers:.3g} "
            f"(worst {result.buffers_key}); tolerance {TOL}{why}")


def load_cases() -> list[Case]:
    """Every ``CASE`` of ``tests/parity/case_*.py``, sorted by module name."""
    import importlib

    here = Path(__file__).resolve().parent
    cases = []
    for path in sorted(here.glob("case_*.py")):
        mod = importlib.import_module(f"{__package__}.{path.stem}" if __package__ else path.stem)
        for case in (getattr(mod, "CASES", None) or [mod.CASE]):
            case.name = case.name or path.stem[len("case_"):]
            cases.append(case)
    return cases
