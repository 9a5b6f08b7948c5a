"""Multi-process training with PyTorch's own engine: ``torch.distributed`` started by ``torchrun``.

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_from_env` turns those into a process group (NCCL when the run uses CUDA, gloo on CPU)
and :class:`DistInfo` says which process this is. Without those variables everything here is a no-op and a run is
the usual single process. The Trainer wraps the model in ``DistributedDataParallel`` for the training
forward/backward only; the pieces below are what the rest of robustrain needs on top: the shard of a batch a rank
owns, broadcasting a decision from rank 0, and gathering per-example results.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Which process this is: ``rank`` of ``world_size`` (``local_rank`` on its node) and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes checkpoints and makes the monitor's decisions."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer (torchrun sets it).") from None


def current() -> DistInfo:
    """The process group this process belongs to (a single process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    rank = dist.get_rank()
    return DistInfo(rank, dist.get_world_size(), _env_int("LOCAL_RANK", rank), dist.get_backend())


def backend_for(device: str) -> str:
    """``nccl`` when the run uses CUDA, else ``gloo``."""
    uses_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if uses_cuda else "gloo"


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables; a no-op without them.

    ``device`` is the run's ``data.device`` (``auto``, ``cpu``, ``cuda``): CUDA runs use NCCL and bind this process
    to GPU ``LOCAL_RANK``; CPU runs use gloo. Returns the :class:`DistInfo` of this process.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run a single process.")
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; start "
            "multi-process runs with torchrun (e.g. torchrun --nproc_per_node=2 -m robustrain.cli train -c ...)."
        )
    backend = backend_for(device)
    local_rank = _env_int("LOCAL_RANK", 0)
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s); start at most one "
                "process per GPU (torchrun --nproc_per_node=<number of GPUs>)."
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return current()


def teardown() -> None:
    """Leave the process group (if this process is in one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """``device`` with this process's GPU index filled in (``cuda`` becomes ``cuda:LOCAL_RANK`` in a CUDA group)."""
    if device.type == "cuda" and device.index is None and current().enabled:
        return torch.device("cuda", current().local_rank)
    return device


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of an ``n``-row batch that ``rank`` owns: contiguous, in rank order, sizes differing by
    at most one, so concatenating the shards of ranks 0, 1, ... gives the batch back in its order."""
    return (n * rank) // world_size, (n * (rank + 1)) // world_size


def _group_device(info: DistInfo) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` holds it, on every rank (picklable objects; the value passed on other ranks is
    ignored). Single process: ``obj`` itself."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    info = current()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """The concatenation along dim 0 of every rank's ``t`` (rank order), on every rank; the ranks' first
    dimensions may differ. Single process: ``t``."""
    info = current()
    if not info.enabled:
        return t
    device = _group_device(info)
    local = t.detach().to(device)
    sizes = torch.tensor([local.shape[0]], device=device, dtype=torch.int64)
    all_sizes = [torch.zeros_like(sizes) for _ in range(info.world_size)]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s.item()) for s in all_sizes]
    width = max(counts)
    if local.dtype == torch.bool:  # not every backend gathers bool
        local = local.to(torch.uint8)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return out.to(device=t.device, dtype=t.dtype)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``t`` (a new tensor on ``t``'s device). Single process: a copy of ``t``."""
    info = current()
    out = t.detach().clone()
    if not info.enabled:
        return out
    work = out.to(_group_device(info))
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (a stop requested on one rank stops all)."""
    if not current().enabled:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


def barrier() -> None:
    """Wait until every rank arrives (a no-op for a single process)."""
    if current().enabled:
        dist.barrier()
