"""Atomic checkpoints and the RNG states that make a resumed run end where the uninterrupted one ends."""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import remove_temporaries, write_atomic
from ..errors import CheckpointError


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one, never half of one.
    """
    write_atomic(path, lambda f: torch.save(obj, f), binary=True)  # the mode of every other file (umask)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the half-written ``.NAME.pt.*.tmp`` files a killed :func:`save_atomic` left in ``folder`` (the
    checkpoints themselves are never half-written); returns what was removed. Call it only when no other process
    writes checkpoints into ``folder`` (e.g. when resuming the run)."""
    return remove_temporaries(folder, "*.pt")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a robustrain checkpoint with ``weights_only=True``; a missing or damaged file says so."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; expected a file written by robustrain train.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a damaged file (IndexError, KeyError...)
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read ({type(e).__name__}: {str(e)[:200]}); it is damaged or "
            "not a robustrain checkpoint. Resume from another checkpoint in the run folder (last.pt, best.pt)."
        ) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds {type(ckpt).__name__}, not a robustrain checkpoint dict with a 'model' entry."
        )
    return ckpt


#: The format of the checkpoints this robustrain writes (``version`` in every checkpoint)
CHECKPOINT_VERSION = 1
#: What a checkpoint needs for a resume (the trainer's own ``state_dict`` keys), and its progress counters.
RESUME_KEYS = ("model", "optimizer", "trainer", "rng", "callbacks", "loss_terms", "weight_perturbation")
PROGRESS_KEYS = ("epoch", "batch_in_epoch", "step", "history")


def check_resumable(ckpt: dict, path: str | Path) -> None:
    """A :class:`~robustrain.errors.CheckpointError` naming what is missing when ``ckpt`` cannot continue a run
    (e.g. a weights-only file, or one saved without the optimiser state)."""
    version = ckpt.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {version!r}; this robustrain reads version "
            f"{CHECKPOINT_VERSION}. Resume it with the robustrain version that wrote it, or start a new run.")
    missing = [k for k in RESUME_KEYS if not isinstance(ckpt.get(k), dict)]
    trainer = ckpt.get("trainer") if isinstance(ckpt.get("trainer"), dict) else {}
    missing += [f"trainer.{k}" for k in PROGRESS_KEYS if "trainer" not in missing and k not in trainer]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be resumed: it lacks {', '.join(missing)} (found: "
            f"{', '.join(sorted(map(str, ckpt))) or 'nothing'}); a resume needs the optimiser state, the progress and "
            "the RNG states that robustrain train writes into last.pt. Evaluate it with robustrain eval, or start a "
            "new run (without --resume).")


def rng_state(generator: torch.Generator) -> dict:
    """Every RNG a run draws from: the trainer's generator and the global torch, numpy and python ones."""
    np_state = np.random.get_state()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _python_state_to_tensor(random.getstate()),
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_python_state_from_tensor(state["python"]))


def _python_state_to_tensor(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_tensor(d: dict) -> tuple:
    return (d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"])
