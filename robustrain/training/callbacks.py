"""Callbacks: the hook through which loggers, the checkpointer and (later) the overfitting monitor
watch and steer the one training loop.

A callback gets the trainer at each hook; it may request a stop (``trainer.should_stop = True``) but
never runs its own loop. Stateful callbacks save their state with the checkpoint under ``state_key``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import write_text_atomic
from ..tables import pct

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class Callback:
    """No-op hooks; override the ones you need.

    In a distributed run the hooks are called on rank 0 only, unless the callback sets ``every_rank = True``
    (those that must act on every process, e.g. the checkpointer, whose save gathers every rank's RNG state, and
    the overfitting monitor, whose decision every rank carries out).
    """

    every_rank = False

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Before the first batch (also after a resume)."""

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        """Before the first batch of an epoch."""

    def on_batch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        """After each optimiser step; ``logs`` holds the step's losses, terms, lr and throughput."""

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        """After the held-out validation of an epoch."""

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        """After validation; ``trainer.epoch`` already counts the finished epoch."""

    def on_fit_end(self, trainer: "Trainer") -> None:
        """After the last epoch or a requested stop."""

    def on_exception(self, trainer: "Trainer", exc: BaseException) -> None:
        """When training raises; the exception is re-raised afterwards."""

    def on_event(self, trainer: "Trainer", event: dict[str, Any]) -> None:
        """When a callback announces an event with ``trainer.emit`` (monitor decisions, rollbacks)."""

    def on_checkpoint_loaded(self, trainer: "Trainer") -> None:
        """After every callback's state was restored from a checkpoint, before loss-term states are."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a ``metrics.jsonl`` and, when its last line is torn (a process killed mid-write), that line
    (which is skipped). A damaged line before the last is a :class:`~robustrain.errors.RobustrainError`."""
    from ..errors import RobustrainError

    lines = Path(path).read_text(errors="replace").split("\n")
    records, torn = [], None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == last:
                torn = line
                continue
            raise RobustrainError(
                f"{str(path)!r} line {i + 1} is not a JSON record ({e}): {line[:80]!r}. The file was edited or damaged; "
                "restore it or delete the line.") from None
        records.append(record)
    return records, torn


class JSONLLogger(Callback):
    """Append one JSON line per logged step and per epoch to ``metrics.jsonl``."""

    def __init__(self, path: str | Path, every: int = 10):
        self.path = Path(path)
        self.every = max(1, int(every))

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Keep only the records of the steps the run continues from: after a resume those the checkpoint contains
        (later ones will be re-run), on a fresh start none (a run killed before its first checkpoint and started
        again would otherwise log its first steps twice). A torn last line (killed mid-write) is dropped."""
        if not self.path.exists():
            return
        records, torn = read_jsonl(self.path)
        kept = [r for r in records if trainer.step and r.get("step", 0) <= trainer.step]
        if torn is not None:
            print(f"[robustrain] {self.path}: dropped a torn last line (the process writing it was killed): "
                  f"{torn[:60]!r}", flush=True)
        if len(kept) != len(records) or torn is not None:
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def on_batch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        if trainer.step % self.every == 0 or trainer.step == 1:
            self._write({"kind": "step", "epoch": trainer.epoch, "step": trainer.step, "time": time.time(), **logs})

    def on_event(self, trainer: "Trainer", event: dict[str, Any]) -> None:
        fields = {k: v for k, v in event.items() if k != "kind"}
        self._write({"kind": "event", "event": event.get("kind", "event"), "time": time.time(), **fields})

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._write({"kind": "epoch", "epoch": trainer.epoch, "step": trainer.step, "time": time.time(), **metrics})


def _shown(key: str, value: float) -> str:
    """One metric of an epoch line: an accuracy (``*_acc``, a fraction) as a percentage, anything else as it is."""
    return f"{key}={pct(value)}%" if key.endswith("_acc") else f"{key}={value:.4g}"


class ProgressBar(Callback):
    """A tqdm bar per epoch with the running loss, training robust accuracy (%) and lr; an epoch line at its end
    (accuracies in percent, README "Units")."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=trainer.steps_per_epoch, initial=trainer.batch_in_epoch,
                         desc=f"epoch {epoch + 1}/{trainer.epochs}", leave=False, dynamic_ncols=True,
                         mininterval=0.5)

    def on_batch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{logs['loss']:.3f}", adv_acc=f"{pct(logs['train_adv_acc'])}%",
                                  lr=f"{logs['lr']:.3g}", refresh=False)

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._close()
        if self.enabled:
            shown = "  ".join(_shown(k, v) for k, v in metrics.items() if k.startswith(("val_", "train_")))
            print(f"epoch {trainer.epoch}/{trainer.epochs}  {shown}", flush=True)

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._close()

    def on_event(self, trainer: "Trainer", event: dict[str, Any]) -> None:
        if "message" in event:  # decisions are shown even without a bar; routine checks are not
            print(f"[robustrain] epoch {event['epoch'] + 1} step {event['step']}: {event['message']}", flush=True)

    def on_exception(self, trainer: "Trainer", exc: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Checkpointer(Callback):
    """Write ``last.pt`` every ``every_steps`` steps and at each epoch end, and ``best.pt`` when the
    validation metric ``monitor`` improves (chosen on the held-out split, never on test; ``monitor`` None: no
    validation split, ``last.pt`` only). Runs on every rank of a
    distributed run (the metrics are the same everywhere); rank 0 writes."""

    every_rank = True

    def __init__(self, run_dir: str | Path, monitor: str | None = "val_robust_acc", every_steps: int = 0):
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.every_steps = int(every_steps)
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_batch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        if self.every_steps and trainer.step % self.every_steps == 0:
            trainer.save_checkpoint(self.run_dir / "last.pt")

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.monitor is None:  # no validation split: nothing to choose a best checkpoint on
            trainer.save_checkpoint(self.run_dir / "last.pt")
            return
        value = metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"Checkpointer monitors {self.monitor!r}, which validation did not report; available: "
                f"{', '.join(sorted(metrics))}."
            )
        if self.best is None or value > self.best:
            self.best, self.best_epoch = float(value), trainer.epoch
            trainer.save_checkpoint(self.run_dir / "best.pt")
        trainer.save_checkpoint(self.run_dir / "last.pt")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
