"""Weights & Biases tracking: a callback that mirrors a run into wandb, and the evaluation report attached later.

What goes to wandb (rank 0 only; ``metrics.jsonl`` is written by :class:`JSONLLogger` in every mode):

- the resolved config with the environment under ``environment``;
- every ``log_every`` steps: ``train/loss``, ``train/loss_main``, ``train/lr``, ``train/images_per_s``,
  ``train/eps``, ``train/adv_acc`` (accuracy on the training attack's points), ``train/epoch`` and each
  regulariser's terms under their own names (``elle/loss``, ``elle/e_lin``, ...), at wandb step = optimiser step;
- every epoch: ``val/clean_acc``, ``val/robust_acc``, ``val/fgsm_acc`` against ``epoch``;
- monitor checks as ``monitor/*``; monitor decisions (catastrophic or robust overfitting, rollback, give-up)
  as a wandb alert, as a point ``event/<kind>`` at that step, and as a row of the ``events`` table;
- ``best.pt`` and ``last.pt`` as model artifacts when ``log_checkpoints`` is on; the test accuracy of
  ``summary.json`` in the run summary (``test/best/...``).

The run id is kept in ``RUN_DIR/wandb_run.json`` so ``--resume`` continues the same wandb run and
``robustrain eval`` attaches its report to it (:func:`attach_report`).
"""
from __future__ import annotations

import json
import math
import netrc
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..atomic import write_text_atomic
from ..errors import ConfigError
from ..registry import choice
from ..training.callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from ..training.trainer import Trainer

RUN_FILE = "wandb_run.json"
MODES = ("online", "offline", "disabled")
EVENT_COLUMNS = ["step", "epoch", "kind", "action", "message"]


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch (``RANK`` set by torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


def _api_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_mode(requested: str = "auto") -> str:
    """online, offline or disabled. An explicit mode wins; ``auto`` takes ``WANDB_MODE`` if set, else online when
    an API key is configured and the server answers within a second, else offline (never waits on a network)."""
    if requested != "auto":
        return choice("wandb mode", requested, ("auto", *MODES), "wandb.mode")
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        mode = {"dryrun": "offline", "run": "online"}.get(env, env)
        if mode not in MODES:
            raise ConfigError(f"the environment variable WANDB_MODE = {env!r}; expected {', '.join(MODES)}.")
        return mode
    host = _api_host()
    return "online" if _has_api_key(host) and _reachable(host) else "offline"


def read_run_file(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _write_run_file(run_dir: Path, info: dict[str, Any]) -> None:
    write_text_atomic(run_dir / RUN_FILE, json.dumps(info, indent=2))


def _remember(run_dir: Path, run: Any, mode: str) -> None:
    """Record the run's id (for --resume and eval) and every offline folder (for ``wandb sync``)."""
    info = read_run_file(run_dir)
    sync_dirs = list(info.get("sync_dirs", []))
    if mode == "offline" and run.settings.sync_dir not in sync_dirs:
        sync_dirs.append(run.settings.sync_dir)
    info.update({"id": run.id, "project": run.project, "entity": run.entity or None, "mode": mode,
                 "url": getattr(run, "url", None) if mode == "online" else None, "sync_dirs": sync_dirs})
    _write_run_file(run_dir, info)


def sync_command(run_dir: str | Path) -> str | None:
    """``wandb sync DIR ...`` with every offline folder of the run (its first training, each resume, each attached
    evaluation: ``sync_dirs`` of ``wandb_run.json``), oldest first; None when there is none."""
    dirs = read_run_file(run_dir).get("sync_dirs") or []
    return "wandb sync " + " ".join(str(d) for d in dirs) if dirs else None


def _finish(run: Any, mode: str, run_dir: Path, exit_code: int = 0, announce: bool = True) -> str | None:
    """End the run; for an offline run return (and print, if ``announce``) the command that uploads it: every
    offline folder of the run (:func:`sync_command`)."""
    sync_dir = run.settings.sync_dir
    run.finish(exit_code=exit_code)
    if mode != "offline":
        return None
    command = sync_command(run_dir) or f"wandb sync {sync_dir}"
    if announce:
        print(f"wandb: offline run saved; upload it with:  {command}", flush=True)
    return command


def wandb_settings(quiet: bool):
    """wandb's settings: ``quiet`` silences wandb's own console output (robustrain prints a one-line summary)."""
    import wandb

    return wandb.Settings(silent=True) if quiet else wandb.Settings(quiet=False)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


class WandbLogger(Callback):
    """Mirror the run into Weights & Biases (see the module docstring for what is logged).

    Args:
        run_dir: the run folder; wandb writes under ``run_dir/wandb`` and the id goes to ``wandb_run.json``.
        mode: auto, online, offline or disabled (:func:`resolve_mode`).
        project, entity, group, tags, name: the wandb run's place and labels.
        config: the resolved config (plain data); ``environment``: versions, commit, command line.
        log_every: steps between logged training steps (the first step is always logged).
        log_checkpoints: upload ``best.pt`` and ``last.pt`` as model artifacts at the end of training.
        finish_at_fit_end: end the wandb run when training ends; :func:`robustrain.run.run_training`
            passes False and calls :meth:`finish` with the test results after the final evaluation.
    """

    state_key = "WandbLogger"

    def __init__(self, run_dir: str | Path, *, mode: str = "auto", project: str = "robustrain",
                 entity: str | None = None, group: str | None = None, tags: list[str] | tuple[str, ...] = (),
                 name: str | None = None, config: dict | None = None, environment: dict | None = None,
                 log_every: int = 10, log_checkpoints: bool = False, finish_at_fit_end: bool = True,
                 quiet: bool = True):
        self.run_dir = Path(run_dir)
        self.requested_mode = mode
        self.project, self.entity, self.group, self.tags, self.name = project, entity, group, list(tags), name
        self.config = dict(config or {})
        self.environment = dict(environment or {})
        self.every = max(1, int(log_every))
        self.log_checkpoints = log_checkpoints
        self.finish_at_fit_end = finish_at_fit_end
        self.quiet = bool(quiet)
        self.mode = "disabled"
        self.run: Any = None
        self.run_id: str | None = None
        self.events: list[list[Any]] = []

    # -- the wandb run -------------------------------------------------------------------------------
    def start(self) -> None:
        """Open (or resume) the wandb run; a no-op when disabled, on non-zero ranks or when already open."""
        if self.run is not None:
            return
        self.mode = resolve_mode(self.requested_mode) if is_main_process() else "disabled"
        if self.mode == "disabled":
            return
        import wandb

        run_id = os.environ.get("WANDB_RUN_ID") or read_run_file(self.run_dir).get("id") or self.run_id \
            or secrets.token_hex(4)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=self.project, entity=self.entity, group=self.group, tags=self.tags or None,
                                  name=self.name, config={**self.config, "environment": self.environment},
                                  mode=self.mode, dir=str(self.run_dir), id=run_id, resume="allow", job_type="train",
                                  settings=wandb_settings(self.quiet))
        except Exception as e:  # noqa: BLE001 - wandb raises many kinds; an explicit mode must work, auto may not
            if self.requested_mode != "auto":
                raise
            print(f"[robustrain] wandb could not start ({type(e).__name__}: {e}); this run is not tracked "
                  "(metrics.jsonl is written as always). Set wandb.mode to offline or online to make this an error.",
                  flush=True)
            self.mode, self.run = "disabled", None
            return
        self.run_id = self.run.id
        self.run.define_metric("epoch")
        self.run.define_metric("val/*", step_metric="epoch")
        _remember(self.run_dir, self.run, self.mode)
        if self.quiet:
            where = getattr(self.run, "url", None) if self.mode == "online" else self.run.settings.sync_dir
            print(f"wandb: {self.mode} run {self.run.id} ({where})", flush=True)

    def finish(self, summary: dict[str, Any] | None = None, exit_code: int = 0, announce: bool = True) -> str | None:
        """Add the test results of ``summary`` to the run summary and end the run; returns the ``wandb sync``
        command of an offline run (printed too unless ``announce`` is False)."""
        if self.run is None:
            return None
        if summary:
            for row in summary.get("test", []):
                for k, v in row.items():
                    if k != "checkpoint" and _number(v) is not None:
                        self.run.summary[f"test/{row['checkpoint']}/{k}"] = v
            self.run.summary["train_seconds"] = summary.get("train_seconds")
        run, self.run = self.run, None
        return _finish(run, self.mode, self.run_dir, exit_code, announce)

    def _log(self, trainer: "Trainer", data: dict[str, Any]) -> None:
        if self.run is not None and trainer.step >= self.run.step:  # a resumed run does not re-log old steps
            self.run.log(data, step=trainer.step)

    # -- hooks ---------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: "Trainer") -> None:
        self.start()

    def on_batch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        if trainer.step % self.every == 0 or trainer.step == 1:
            data = {(k if "/" in k else f"train/{k.removeprefix('train_')}"): v for k, v in logs.items()}
            data["train/epoch"] = trainer.step / trainer.steps_per_epoch
            self._log(trainer, data)

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        data: dict[str, Any] = {"epoch": trainer.epoch}
        for k, v in metrics.items():
            if k.startswith("val_"):
                data["val/" + k[4:]] = v
            elif k != "epoch":
                data[f"epoch/{k}"] = v
        self._log(trainer, data)

    def on_event(self, trainer: "Trainer", event: dict[str, Any]) -> None:
        kind = str(event.get("kind", "event"))
        fields = {k: v for k, v in event.items() if k not in ("kind", "epoch", "step")}
        if kind == "monitor_check":
            self._log(trainer, {f"monitor/{k}": v for k, v in fields.items() if _number(v) is not None})
            return
        message = str(event.get("message", kind))
        self.events.append([int(event.get("step", trainer.step)), int(event.get("epoch", trainer.epoch)), kind,
                            str(event.get("action", "")), message])
        if self.run is None:
            return
        import wandb

        self._log(trainer, {f"event/{kind}": 1.0,
                            **{f"event/{kind}/{k}": v for k, v in fields.items() if _number(v) is not None}})
        self.run.alert(title=f"{self.name or self.run.name}: {kind.replace('_', ' ')}", text=message,
                       level=wandb.AlertLevel.WARN, wait_duration=1)

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.run is None:
            return
        import wandb

        table = wandb.Table(columns=EVENT_COLUMNS, data=self.events)
        self.run.log({"events": table}, step=max(trainer.step, self.run.step))
        self.run.summary["n_events"] = len(self.events)
        best = [h for h in trainer.history if isinstance(h.get("val_robust_acc"), float)]
        if best:
            top = max(best, key=lambda h: h["val_robust_acc"])
            self.run.summary["best/val_robust_acc"] = top["val_robust_acc"]
            self.run.summary["best/epoch"] = top["epoch"]
        if self.log_checkpoints:
            self._log_checkpoints(trainer)
        if self.finish_at_fit_end:
            self.finish()

    def on_exception(self, trainer: "Trainer", exc: BaseException) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            _finish(run, self.mode, self.run_dir, exit_code=1)

    def _log_checkpoints(self, trainer: "Trainer") -> None:
        import wandb

        from ..training.callbacks import Checkpointer

        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, Checkpointer)), None)
        for which in ("best", "last"):
            path = self.run_dir / f"{which}.pt"
            if not path.exists():
                continue
            if which == "best" and ckpt is not None:
                meta = {"epoch": ckpt.best_epoch, ckpt.monitor: ckpt.best}
            else:
                meta = {"epoch": trainer.epoch}
            art = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=meta)
            art.add_file(str(path), name=path.name)
            self.run.log_artifact(art, aliases=[which])

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "events": list(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id
        self.events = [list(e) for e in state.get("events", [])]


def _flat_numbers(data: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_flat_numbers(v, f"{prefix}/{k}" if prefix else str(k)))
    elif _number(data) is not None and math.isfinite(float(data)):
        out[prefix] = data
    return out


def attach_report(run_dir: str | Path, report_path: str | Path) -> str | None:
    """Attach an evaluation report (``eval.json``, ``report.json``, ...) to the run's wandb run: its numbers go to
    the run summary under ``eval/...`` (``eval/<file stem>/...`` for a file not called ``eval.json``) and the file
    itself becomes an ``evaluation`` artifact (with the full report it names under ``"report"``, and that report's
    ``.md``, when they exist).

    Does nothing (returns None) for a run that was not tracked, with ``WANDB_MODE=disabled`` or on non-zero ranks;
    returns the wandb run id otherwise. The run is resumed in the mode it was trained in (online falls back to
    offline without a network)."""
    info = read_run_file(run_dir)
    report_path = Path(report_path)
    if not info.get("id") or info.get("mode") in (None, "disabled") or not is_main_process():
        return None
    if os.environ.get("WANDB_MODE", "").strip().lower() == "disabled":
        return None
    mode = resolve_mode("auto") if info["mode"] == "online" else info["mode"]
    if mode == "disabled":
        return None
    import wandb

    run = wandb.init(id=info["id"], project=info.get("project"), entity=info.get("entity"), resume="allow",
                     mode=mode, dir=str(run_dir), settings=wandb_settings(True))
    _remember(Path(run_dir), run, mode)
    report = json.loads(report_path.read_text())
    prefix = "eval" if report_path.stem == "eval" else f"eval/{report_path.stem}"  # eval.json: eval/clean_acc
    for k, v in _flat_numbers(report).items():
        run.summary[f"{prefix}/{k}"] = v
    art = wandb.Artifact(f"eval-{run.id}", type="evaluation", metadata={"file": report_path.name})
    art.add_file(str(report_path), name=report_path.name)
    full = Path(str(report.get("report", ""))) if isinstance(report, dict) else Path()
    for extra in (full, full.with_suffix(".md")) if full.suffix == ".json" else ():
        if extra.is_file():  # eval.json names the full evaluation report (report.json / report.md): attach it too
            art.add_file(str(extra), name=f"{full.parent.name}/{extra.name}")
    run.log_artifact(art, aliases=[report_path.stem])
    run_id = run.id
    _finish(run, mode, Path(run_dir), announce=False)
    return run_id
