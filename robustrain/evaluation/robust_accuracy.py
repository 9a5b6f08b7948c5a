"""Clean and robust accuracy, per example, with the model in eval mode."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..attacks import Attack
from ..distributed import DistInfo, all_gather_cat, current, shard_bounds
from ..guards import eval_mode
from ..tables import pct


@dataclass
class EvalResult:
    """Per-example correctness under each attack; an example counts as robust to an attack only if it is
    also classified correctly clean."""

    correct: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def accuracy(self) -> dict[str, float]:
        return {k: v.float().mean().item() for k, v in self.correct.items()}

    @property
    def n(self) -> int:
        return next(iter(self.correct.values())).numel() if self.correct else 0


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    attacks: Mapping[str, Attack],
    *,
    generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
    distributed: bool = False,
    progress: str | None = None,
    total: int | None = None,
) -> EvalResult:
    """Clean accuracy (key ``"clean"``) and accuracy under each attack in ``attacks`` on ``batches``.

    Every adversarial batch is checked against the attack's threat model before it is scored.

    ``distributed=True`` (every rank of a process group calls it with the same batches): each rank evaluates its
    shard of every batch (:func:`robustrain.distributed.shard_bounds`) and the per-example results are gathered,
    so every rank returns the per-example results of all examples in their order. With deterministic attacks
    (clean, FGSM) they equal the single-process ones; random starts are drawn by each rank from ``generator`` for
    its own shard, so those results agree with a single process in distribution, not bit for bit.

    ``progress`` (a label): a progress bar on stderr by examples (``total``: how many, when known), showing the
    clean and attacked accuracy of the examples evaluated so far (examples still to come are not counted).
    """
    info = current() if distributed else DistInfo()
    shard_sizes: list[list[int]] = []  # per batch, every rank's number of examples
    device_type = next(model.parameters()).device.type

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=amp_dtype)

    flags: dict[str, list[Tensor]] = {"clean": [], **{name: [] for name in attacks}}
    seconds = {name: 0.0 for name in flags}
    bar = _bar(progress if info.is_main else None, total)
    with eval_mode(model), bar:
        for i, (x, y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if info.enabled:
                n = x.shape[0]
                bounds = [shard_bounds(n, r, info.world_size) for r in range(info.world_size)]
                shard_sizes.append([b - a for a, b in bounds])
                lo, hi = shard_bounds(n, info.rank, info.world_size)
                x, y = x[lo:hi], y[lo:hi]
                if x.shape[0] == 0:
                    for name in flags:
                        flags[name].append(torch.zeros(0, dtype=torch.bool))
                    continue
            t0 = time.perf_counter()
            with torch.no_grad(), autocast():
                clean = model(x).argmax(dim=1) == y
            flags["clean"].append(clean.cpu())
            seconds["clean"] += time.perf_counter() - t0
            for name, attack in attacks.items():
                t0 = time.perf_counter()
                res = attack(model, x, y, generator=generator)
                inside = attack.threat.contains(x, res.x_adv, radius=attack.max_norm, atol=1e-5)
                if not bool(inside.all()):
                    raise AssertionError(
                        f"attack {name} returned {int((~inside).sum())} points outside its threat model "
                        f"{attack.threat!r}; this is a bug in the attack."
                    )
                with torch.no_grad(), autocast():
                    adv = model(res.x_adv).argmax(dim=1) == y
                flags[name].append((adv & clean).cpu())
                seconds[name] += time.perf_counter() - t0
            if bar is not _NO_BAR:
                bar.update(y.shape[0] * info.world_size if info.enabled else y.shape[0])
                bar.set_postfix_str("  ".join(f"{k} {pct(torch.cat(v).float().mean().item())}%"
                                              for k, v in flags.items() if v), refresh=False)
    correct = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool) for k, v in flags.items()}
    if info.enabled:
        correct = {k: _in_batch_order(all_gather_cat(v), shard_sizes) for k, v in correct.items()}
    return EvalResult(correct=correct, seconds=seconds)


class _NoBar(contextlib.nullcontext):
    def update(self, n: int) -> None: ...

    def set_postfix_str(self, s: str, refresh: bool = True) -> None: ...


_NO_BAR = _NoBar()


def _bar(label: str | None, total: int | None):
    if label is None:
        return _NO_BAR
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="ex", file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5)


def _in_batch_order(gathered: Tensor, shard_sizes: list[list[int]]) -> Tensor:
    """Reorder rank-major gathered results (rank 0's shards of every batch, then rank 1's, ...) into the order of
    the examples: batch 0's shards of ranks 0, 1, ..., then batch 1's."""
    world = len(shard_sizes[0]) if shard_sizes else 1
    per_rank = gathered.split([sum(s[r] for s in shard_sizes) for r in range(world)])
    pieces = [part.split([s[r] for s in shard_sizes]) for r, part in enumerate(per_rank)]
    return torch.cat([pieces[r][i] for i in range(len(shard_sizes)) for r in range(world)]) if shard_sizes else gathered
