"""What the one training loop needs to run on several processes: the module the training forward runs through
(``DistributedDataParallel``, optionally compiled), per-rank seeds, and the per-step agreement of the ranks.

Semantics (design): rank r trains on its shard of every global batch (``BatchLoader(rank=, world_size=)``), attacks
its shard with its own generator, and DDP averages the gradients, so with equal shards the update is that of one
process on the global batch (the attack noise differs, being drawn per rank). When shards differ in size the loss
is scaled by ``n_rank * world / n_global`` so the averaged gradient is still that of the global batch's mean loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..data.loader import derive_seed
from ..distributed import DistInfo, all_reduce_sum, broadcast_object
from .compiled import CompiledModule
from .hooks import LossTerm, StepContext


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s generator: ``seed`` itself on rank 0 (so a single process is unchanged), a
    derived, independent one on the others (their attack noise and regulariser draws are not rank 0's)."""
    return seed if rank == 0 else derive_seed("rank", seed, rank)


def training_module(model: nn.Module, info: DistInfo, *, compile: bool = False) -> nn.Module:
    """What the training forward/backward runs through: ``model``, wrapped in ``DistributedDataParallel`` in a
    process group (gradients averaged over ranks in the backward), and in :class:`CompiledModule` when
    ``compile``. Attacks, validation and checkpoints keep using ``model`` itself."""
    module = model
    if info.enabled:
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile:
        module = CompiledModule(module)
    return module


@dataclass
class SyncedStep:
    """A training step's values as every rank agrees on them (a single process: its own values)."""

    finite: bool  # the loss is finite on every rank
    backward_loss: Tensor  # what this rank backpropagates
    loss: float  # the global batch's mean loss
    adv_acc: float  # training accuracy on x_adv over the global batch
    examples: int  # examples in the global batch
    logs: dict[str, float]
    term_outs: list[dict[str, Any]]  # handed to each term's after_step


def sync_step(ctx: StepContext, loss: Tensor, logs: dict[str, float], terms: Sequence[LossTerm],
              term_outs: list[dict[str, Any]], info: DistInfo) -> SyncedStep:
    """One all-reduce per step: the example-weighted mean over ranks of the loss, the training accuracy and every
    logged value (so every rank logs, checks finiteness and updates loss-term state, e.g. ELLE-A's λ, with the same
    global values), the global batch size, and the factor that makes DDP's averaged gradient that of the global
    mean loss when shards differ in size."""
    n = ctx.x.shape[0]
    with torch.no_grad():
        acc = (ctx.logits_adv.argmax(1) == ctx.y).float().mean().item() if ctx.logits_adv is not None else math.nan
    if not info.enabled:
        return SyncedStep(bool(torch.isfinite(loss)), loss, loss.item(), acc, n, logs, term_outs)
    keys = list(logs)
    local = torch.tensor([float(n), float(not torch.isfinite(loss)), n * loss.item(), n * acc,
                          *(n * logs[k] for k in keys)], dtype=torch.float64)
    total = all_reduce_sum(local)
    n_global = int(total[0].item())
    means = (total[2:] / n_global).tolist()
    synced_logs = dict(zip(keys, means[2:]))
    outs = []
    for term, t_out in zip(terms, term_outs):
        outs.append({k: v if k == "loss" else synced_logs[f"{term.name}/{k}"] for k, v in t_out.items()})
    scale = n * info.world_size / n_global
    return SyncedStep(total[1].item() == 0, loss if scale == 1.0 else loss * scale, means[0], means[1], n_global,
                      synced_logs, outs)


def sync_term_states(terms: Sequence[LossTerm], device: torch.device) -> None:
    """Give every rank rank 0's loss-term states (at each epoch end): terms whose state is not identical by
    construction (e.g. ConvergeSmooth's per-epoch means, weighted by shard sizes) continue alike everywhere."""
    states = broadcast_object([_to(t.state_dict(), torch.device("cpu")) for t in terms])
    for term, state in zip(terms, states):
        term.load_state_dict(_to(state, device))


def _to(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj
