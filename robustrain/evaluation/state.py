"""Resumable evaluation state: per-stage flags written atomically after every batch, keyed by the evaluation's config."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import write_json_atomic
from ..errors import RobustrainError


def flags_to_str(flags: Tensor) -> str:
    """A bool vector as a string of '0'/'1' (one character per example, in example order)."""
    return "".join("1" if v else "0" for v in flags.tolist())


def str_to_flags(s: str) -> Tensor:
    return torch.tensor([c == "1" for c in s], dtype=torch.bool)


def config_key(config: dict[str, Any]) -> str:
    """A short hash of everything that determines an evaluation's result."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _digest(key: str, stages: Any) -> str:
    """A checksum of the saved progress: an edited state file is refused, not continued from."""
    blob = json.dumps([key, stages], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class EvalState:
    """Progress of one evaluation: for each stage, the flags so far and the index of the next batch.

    The file name carries the config key, so a different command (other model, data, attacks, seed or batch
    size) never continues a foreign state.
    """

    def __init__(self, path: Path | None, key: str) -> None:
        self.path, self.key = path, key
        self.stages: dict[str, dict[str, Any]] = {}
        self.resumed = False
        if path is not None and path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise RobustrainError(
                    f"evaluation state {str(path)!r} is unreadable ({e}); delete it to start the evaluation afresh."
                ) from e
            if not isinstance(saved, dict) or saved.get("key") != key:
                raise RobustrainError(
                    f"evaluation state {str(path)!r} belongs to another evaluation (key "
                    f"{saved.get('key') if isinstance(saved, dict) else None!r}, expected {key!r}); delete it or "
                    "choose another --out."
                )
            if saved.get("digest") != _digest(key, saved.get("stages")):
                raise RobustrainError(
                    f"evaluation state {str(path)!r} was changed after robustrain wrote it (its checksum does not "
                    "match its content); its results cannot be trusted. Delete it to run the evaluation afresh.")
            self.stages = saved["stages"]
            self.resumed = bool(self.stages)

    @classmethod
    def for_dir(cls, out_dir: Path | None, config: dict[str, Any]) -> "EvalState":
        key = config_key(config)
        return cls(None if out_dir is None else Path(out_dir) / f".eval_state-{key}.json", key)

    def save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, {"key": self.key, "stages": self.stages,
                                          "digest": _digest(self.key, self.stages)})

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()
