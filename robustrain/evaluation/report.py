"""The evaluation report: its JSON schema (a plain dict), a small validator, checksums, and the markdown table."""
from __future__ import annotations

import hashlib
import re
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import write_json_atomic
from ..errors import RobustrainError
from ..tables import pct

SCHEMA_VERSION = 2
"""2: the settings of every robustrain attack stage are the attack's own ``Attack.settings()`` (the real step and the
rule that chose it: FGSM's is ε, not the "eps/4 (default)" that version 1 wrote for every attack), checked against
:data:`ATTACK_SETTINGS`."""

_FLAGS = {"type": "string", "pattern": "^[01]*$"}
_NUM01 = {"type": "number", "minimum": 0, "maximum": 1}
_STAGE = {
    "type": "object",
    "required": ["name", "group", "after", "settings", "n_attacked", "n_robust", "robust_acc", "seconds",
                 "attacked", "robust", "adversarial"],
    "properties": {
        "name": {"type": "string"}, "group": {"type": "string"}, "after": {"type": ["string", "null"]},
        "settings": {"type": "object"}, "n_attacked": {"type": "integer", "minimum": 0},
        "n_robust": {"type": "integer", "minimum": 0}, "robust_acc": _NUM01, "seconds": {"type": "number", "minimum": 0},
        "attacked": _FLAGS, "robust": _FLAGS,
        "adversarial": {"type": ["object", "null"], "required": ["max_norm", "n_outside", "n_nonfinite"]},
    },
}
_NUM0 = {"type": "number", "minimum": 0}
ATTACK_SETTINGS: dict[str, Any] = {
    "type": "object",
    "required": ["name", "label", "norm", "radius", "scale", "step", "step_rule", "steps", "restarts", "start",
                 "projection", "box_clip", "max_norm", "bn_mode"],
    "properties": {
        "name": {"type": "string"}, "label": {"type": "string"}, "norm": {"enum": ["linf", "l2", "l1"]},
        "radius": _NUM0, "scale": _NUM0, "step": {"type": ["number", "null"], "minimum": 0},
        "step_rule": {"type": ["string", "null"]}, "steps": {"type": ["integer", "null"], "minimum": 1},
        "restarts": {"type": ["integer", "null"], "minimum": 1}, "start": {"type": ["string", "null"]},
        "projection": {"type": ["string", "null"]}, "box_clip": {"type": ["string", "null"]}, "max_norm": _NUM0,
        "bn_mode": {"enum": ["eval"]},
    },
}
"""The settings of a robustrain attack stage (``Attack.settings()``: any stage whose group is not in
:data:`NOT_ROBUSTRAIN`); evaluation attacks run the model in eval mode."""
NOT_ROBUSTRAIN = ("clean", "autoattack", "component")
"""Stage groups that are not robustrain attacks: clean accuracy, the AutoAttack cascade, a component run alone."""
_CHECK = {
    "type": "object", "required": ["name", "when", "level", "message", "value"],
    "properties": {"name": {"type": "string"}, "when": {"enum": ["before", "after"]},
                   "level": {"enum": ["ok", "warning", "error"]}, "message": {"type": "string"},
                   "value": {"type": "object"}},
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema_version", "model", "data", "threat", "attacks", "backend", "seed", "batch_size", "n_ex",
                 "settings", "standard", "stages", "accuracy", "final", "sanity", "runtime", "environment", "resumed"],
    "properties": {
        "schema_version": {"enum": [SCHEMA_VERSION]},
        "model": {"type": "object", "required": ["source", "sha256", "num_classes"],
                  "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                 "num_classes": {"type": "integer", "minimum": 2}}},
        "data": {"type": "object", "required": ["dataset", "split", "n_ex", "sha256"],
                 "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                "n_ex": {"type": "integer", "minimum": 0}}},
        "threat": {"type": "object", "required": ["norm", "eps"],
                   "properties": {"norm": {"enum": ["linf", "l2", "l1"]}, "eps": {"type": "number", "minimum": 0}}},
        "attacks": {"type": "array", "items": {"type": "string"}},
        "backend": {"type": ["object", "null"], "required": ["name", "version"]},
        "seed": {"type": "integer"}, "batch_size": {"type": "integer", "minimum": 1},
        "n_ex": {"type": "integer", "minimum": 0},
        "settings": {"type": "object"}, "standard": {"type": ["boolean", "null"]},
        "stages": {"type": "array", "items": _STAGE},
        "accuracy": {"type": "object", "additionalProperties": _NUM01},
        "final": {"type": "object", "required": ["robust_acc", "n_robust", "robust"],
                  "properties": {"robust_acc": _NUM01, "n_robust": {"type": "integer", "minimum": 0},
                                 "robust": _FLAGS}},
        "sanity": {"type": "object", "required": ["checks", "n_warnings", "n_errors"],
                   "properties": {"checks": {"type": "array", "items": _CHECK},
                                  "n_warnings": {"type": "integer", "minimum": 0},
                                  "n_errors": {"type": "integer", "minimum": 0}}},
        "runtime": {"type": "object", "required": ["total_seconds", "per_stage"],
                    "properties": {"per_stage": {"type": "object", "additionalProperties": {"type": "number"}}}},
        "environment": {"type": "object", "required": ["torch", "torchattacks", "python"]},
        "resumed": {"type": "boolean"},
    },
}
_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
                                       "integer": (int,), "number": (int, float), "null": (type(None),)}


class ReportSchemaError(RobustrainError, ValueError):
    """A report does not match :data:`SCHEMA`."""


def schema_errors(obj: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every mismatch between ``obj`` and ``schema`` (the subset of JSON Schema used by :data:`SCHEMA`)."""
    errs: list[str] = []
    if "enum" in schema and obj not in schema["enum"]:
        return [f"{path}: {obj!r} is not one of {schema['enum']}"]
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        ok = any(isinstance(obj, _TYPES[t]) and not (t in ("integer", "number") and isinstance(obj, bool))
                 for t in types)
        if not ok:
            return [f"{path}: expected {' or '.join(types)}, got {type(obj).__name__}"]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        if "minimum" in schema and obj < schema["minimum"]:
            errs.append(f"{path}: {obj} < minimum {schema['minimum']}")
        if "maximum" in schema and obj > schema["maximum"]:
            errs.append(f"{path}: {obj} > maximum {schema['maximum']}")
    if isinstance(obj, str) and "pattern" in schema and not re.search(schema["pattern"], obj):
        errs.append(f"{path}: {obj[:40]!r} does not match {schema['pattern']}")
    if isinstance(obj, dict):
        errs += [f"{path}: missing key {k!r}" for k in schema.get("required", []) if k not in obj]
        props = schema.get("properties", {})
        for k, v in obj.items():
            sub = props.get(k, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                errs += schema_errors(v, sub, f"{path}.{k}")
    if isinstance(obj, list) and "items" in schema:
        for i, v in enumerate(obj):
            errs += schema_errors(v, schema["items"], f"{path}[{i}]")
    return errs


def validate_report(report: dict[str, Any]) -> None:
    """Raise :class:`ReportSchemaError` listing every problem when ``report`` does not match :data:`SCHEMA`, when a
    robustrain attack stage's settings do not match :data:`ATTACK_SETTINGS`, or when its per-example flag strings do
    not have ``n_ex`` characters."""
    errs = schema_errors(report, SCHEMA)
    if not errs:
        for i, s in enumerate(report["stages"]):
            if s["group"] not in NOT_ROBUSTRAIN:
                errs += schema_errors(s["settings"], ATTACK_SETTINGS, f"$.stages[{i}].settings")
                errs += schema_errors(report["settings"].get(s["name"]), ATTACK_SETTINGS, f"$.settings.{s['name']}")
    if not errs:
        n = report["n_ex"]
        flags = [("final.robust", report["final"]["robust"])]
        flags += [(f"stages[{i}].{k}", s[k]) for i, s in enumerate(report["stages"]) for k in ("attacked", "robust")]
        errs = [f"{where}: {len(f)} flags for n_ex = {n}" for where, f in flags if len(f) != n]
    if errs:
        raise ReportSchemaError("evaluation report does not match its schema:\n  " + "\n  ".join(errs))


# -- checksums and versions -----------------------------------------------------------------------------
def model_sha256(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_sha256(x: Tensor, y: Tensor) -> str:
    """sha256 of the evaluated inputs (as float32) and labels (as int64)."""
    h = hashlib.sha256()
    h.update(x.detach().cpu().float().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().long().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- output ---------------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return pct(v)


def _attack_line(a: dict[str, Any]) -> str:
    """One robustrain attack's settings in words: step (and its rule), steps, restarts, start, projection."""
    from ..attacks.base import format_step

    step = "no step" if a["step"] is None else (f"step {format_step(a['step'], a['norm'])}"
                                               + (f" ({a['step_rule']})" if a["step_rule"] else ""))
    return (f"- {a['label']}: {step}, {a['steps']} step(s), {a['restarts']} restart(s); start: {a['start']}; "
            f"projection: {a['projection']}; box clip: {a['box_clip']}")


def markdown(report: dict[str, Any]) -> str:
    """The report as a short markdown page: one row per stage, the final number, the sanity checks."""
    from ..tables import format_table, radius_label

    t, m, d = report["threat"], report["model"], report["data"]
    rows = [{"stage": s["name"], "after": s["after"] or "", "attacked": s["n_attacked"],
             "robust": s["n_robust"], "robust_acc (%)": _pct(s["robust_acc"]), "seconds": f"{s['seconds']:.1f}"}
            for s in report["stages"]]
    lines = [
        f"# Robustness evaluation: {m.get('name') or m['source']}",
        "",
        f"- threat model: {t['norm']}, eps = {radius_label(t['eps'])}; data: {d['dataset']} {d['split']}, first {d['n_ex']} "
        f"examples (sha256 {d['sha256'][:12]}); model sha256 {m['sha256'][:12]}",
        f"- attacks: {', '.join(report['attacks'])}; backend: "
        + (f"{report['backend']['name']} {report['backend']['version']}" if report["backend"] else "none")
        + f"; seed {report['seed']}; batch size {report['batch_size']}"
        + ("" if report["standard"] is None else ("; standard AutoAttack settings" if report["standard"]
                                                  else "; **non-standard AutoAttack settings**")),
        *(_attack_line(s["settings"]) for s in report["stages"] if s["group"] not in NOT_ROBUSTRAIN),
        f"- **worst-case robust accuracy: {_pct(report['final']['robust_acc'])}%** "
        f"({report['final']['n_robust']}/{report['n_ex']}); total {report['runtime']['total_seconds']:.1f} s"
        + (" (resumed)" if report["resumed"] else ""),
        "",
        format_table(rows, list(rows[0])) if rows else "(no stages)",
        "",
        "Sanity checks:",
        "",
    ]
    lines += [f"- {c['level'].upper() if c['level'] != 'ok' else 'ok'}: {c['name']}: {c['message']}"
              for c in report["sanity"]["checks"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir) -> tuple[Any, Any]:
    """Validate ``report`` and write ``report.json`` and ``report.md`` into ``out_dir``."""
    from pathlib import Path

    validate_report(report)
    out = Path(out_dir)
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text(markdown(report))
    return out / "report.json", out / "report.md"
