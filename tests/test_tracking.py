"""Weights & Biases tracking, run reports and the sweep recipe.

A tiny digits run is tracked by wandb in offline mode (the real wandb, nothing mocked); the logged history is read
back from the offline run's ``.wandb`` file with wandb's own protobuf schema and compared with what the run wrote
to ``metrics.jsonl`` and ``summary.json``: the config, every per-epoch metric, the training steps, the monitor's
events (history points, alerts, table), the checkpoint artifacts; a resumed run continues the same wandb run;
an evaluation report is attached to it. Then ``robustrain report`` draws the run folder.
"""
from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest
import yaml

from robustrain.cli import main
from robustrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
SWEEP = ROOT / "configs" / "sweeps" / "cifar10_single_step.yaml"


# -- reading an offline run with wandb's protobuf schema -----------------------------------------------------
def wandb_records(path: Path):
    """The records of a ``.wandb`` transaction log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks
    of chunks (4-byte checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last) each holding a
    serialised ``wandb_internal.Record`` or a piece of one."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little left in the block for a chunk header: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        assert kind in (1, 2, 3, 4) and pos + length <= len(data), f"corrupt chunk at byte {pos - 7} of {path}"
        pending += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _items(items) -> dict:
    return {(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in items}


def read_offline_run(sync_dir: Path, wait_s: float = 30.0) -> dict:
    """Config, history rows, summary, alerts and artifacts of one offline run folder. wandb's service process
    writes the log asynchronously, so this waits (up to ``wait_s``) until the log ends with the run's exit record."""
    (log,) = sync_dir.glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    while True:
        records = list(wandb_records(log))
        if (records and records[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out = {"run": None, "config": {}, "history": [], "summary": {}, "alerts": [], "artifacts": []}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            out["config"].update(_items(r.run.config.update))
        elif kind == "config":
            out["config"].update(_items(r.config.update))
        elif kind == "history":
            out["history"].append(_items(r.history.item))
        elif kind == "summary":
            out["summary"].update(_items(r.summary.update))
        elif kind == "alert":
            out["alerts"].append(r.alert)
        elif kind == "artifact":
            out["artifacts"].append(r.artifact)
    return out


# -- one tracked run, shared by the tests ----------------------------------------------------------------------
TINY = ["--set", "train.epochs=2", "--set", "train.progress=false", "--set", "train.log_every=1",
        "--set", "data.train_subset=128", "--set", "data.val_size=100",
        "--set", "validation.attack={name: pgd, steps: 2, restarts: 1}",
        "--set", "eval.attack={name: pgd, steps: 2, restarts: 1}", "--set", "eval.n_ex=100",
        "--set", "regularisers=[{name: elle, lam: 10}]",
        # a gap threshold below zero makes the monitor declare catastrophic overfitting at its first check
        "--set", "monitor.enabled=true", "--set", "monitor.co_gap=-1", "--set", "monitor.n_check=32",
        "--set", "monitor.pgd_steps=2", "--set", "monitor.every=1",
        "--set", "wandb.mode=offline", "--set", "wandb.log_checkpoints=true", "--set", "wandb.tags=[test, digits]",
        "--set", "wandb.group=tests"]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tracked") / "run"
    assert main(["train", "-c", str(QUICK), "--run-dir", str(run), *TINY]) == 0
    return run


def _sync_dirs(run: Path) -> list[Path]:
    return [Path(p) for p in json.loads((run / "wandb_run.json").read_text())["sync_dirs"]]


def _jsonl(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_offline_run_holds_config_metrics_and_events(tracked_run):
    info = json.loads((tracked_run / "wandb_run.json").read_text())
    assert info["mode"] == "offline" and len(info["sync_dirs"]) == 1
    logged = read_offline_run(_sync_dirs(tracked_run)[0])
    assert logged["run"].run_id == info["id"]
    assert logged["run"].run_group == "tests" and list(logged["run"].tags) == ["test", "digits"]
    assert logged["run"].display_name == "quickstart_digits"

    # the resolved config (as config.yaml has it) and the environment
    cfg = yaml.safe_load((tracked_run / "config.yaml").read_text())
    for key in ("threat", "attack", "optim", "schedule", "regularisers", "monitor", "seed"):
        assert logged["config"][key] == {"value": cfg[key]} or logged["config"][key] == cfg[key]
    env = logged["config"]["environment"]
    env = env.get("value", env)
    assert env["torch"] and "git_commit" in env

    records = _jsonl(tracked_run)
    by_step: dict[int, dict] = {}
    for row in logged["history"]:
        by_step.setdefault(row["_step"], {}).update(row)
    # every epoch's validation metrics, at the epoch's last step
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2
    for e in epochs:
        row = by_step[e["step"]]
        assert row["epoch"] == e["epoch"]
        for key in ("val_clean_acc", "val_fgsm_acc", "val_robust_acc"):
            assert row["val/" + key[4:]] == pytest.approx(e[key]), key
    # every logged training step (log_every 1): losses, the regulariser's terms, lr, throughput, radius
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == 4
    for s in steps:
        row = by_step[s["step"]]
        for key in ("loss", "loss_main", "lr", "images_per_s", "eps"):
            assert row["train/" + key] == pytest.approx(s[key]), key
        assert row["train/adv_acc"] == pytest.approx(s["train_adv_acc"])
        assert row["elle/loss"] == pytest.approx(s["elle/loss"])
    # the monitor: its checks, and its decision as a point, an alert and a row of the events table
    checks = [r for r in records if r["kind"] == "event" and r["event"] == "monitor_check"]
    assert len(checks) == 4
    for c in checks:
        assert by_step[c["step"]]["monitor/pgd_acc"] == pytest.approx(c["pgd_acc"])
    declared = [r for r in records if r["kind"] == "event" and r["event"] == "catastrophic_overfitting"]
    assert len(declared) == 1
    assert by_step[declared[0]["step"]]["event/catastrophic_overfitting"] == 1.0
    assert [a.text for a in logged["alerts"]] == [declared[0]["message"]]
    assert logged["summary"]["n_events"] == 1
    table = next(row for row in logged["history"] if "events/_type" in row)
    assert table["events/_type"] == "table-file" and table["events/nrows"] == 1
    rows = json.loads((_sync_dirs(tracked_run)[0] / "files" / table["events/path"]).read_text())
    assert rows["columns"] == ["step", "epoch", "kind", "action", "message"]
    assert rows["data"] == [[declared[0]["step"], declared[0]["epoch"], "catastrophic_overfitting", "warn",
                             declared[0]["message"]]]
    # the checkpoints, and the test accuracy of summary.json
    models = [a for a in logged["artifacts"] if a.type == "model"]
    assert len(models) == 2 and {x for a in models for x in a.aliases} - {"latest"} == {"best", "last"}
    summary = json.loads((tracked_run / "summary.json").read_text())
    for row in summary["test"]:
        assert logged["summary"][f"test/{row['checkpoint']}/clean_acc"] == row["clean_acc"]
        assert logged["summary"][f"test/{row['checkpoint']}/pgd-2-1_acc"] == row["pgd-2-1_acc"]


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run_and_eval_attaches_its_report(tracked_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(tracked_run, run, ignore=shutil.ignore_patterns("wandb"))
    info = json.loads((run / "wandb_run.json").read_text())
    info["sync_dirs"] = []
    (run / "wandb_run.json").write_text(json.dumps(info))
    assert main(["train", "-c", str(QUICK), "--run-dir", str(run), "--resume", *TINY, "--set", "train.epochs=3"]) == 0
    (sync,) = _sync_dirs(run)
    assert capsys.readouterr().out.rstrip().endswith(f"upload this run with  wandb sync {sync}")  # printed last
    resumed = read_offline_run(sync)
    assert resumed["run"].run_id == info["id"]
    third = [r for r in _jsonl(run) if r["kind"] == "epoch"][-1]
    assert third["epoch"] == 3
    assert resumed["history"] and all(row["_step"] > 4 for row in resumed["history"])  # only the new epoch
    assert any(row.get("val/robust_acc") == pytest.approx(third["val_robust_acc"]) for row in resumed["history"])

    from robustrain.tracking import attach_report

    monkeypatch.delenv("WANDB_MODE")  # conftest's WANDB_MODE=disabled would keep the report out (as it should)
    report = run / "eval.json"
    (run / "eval").mkdir()
    (run / "eval" / "report.json").write_text(json.dumps({"stages": []}))
    (run / "eval" / "report.md").write_text("# report\n")
    report.write_text(json.dumps({"n_ex": 100, "clean_acc": 0.81, "pgd-50-10_acc": 0.405, "attack": {"steps": 50},
                                  "report": str(run / "eval" / "report.json")}))
    assert attach_report(run, report) == info["id"]
    attached = read_offline_run(_sync_dirs(run)[-1])
    assert attached["run"].run_id == info["id"]
    assert attached["summary"]["eval/pgd-50-10_acc"] == 0.405  # eval.json's numbers under eval/, not eval/eval/
    assert attached["summary"]["eval/attack/steps"] == 50
    assert not any(k.startswith("eval/eval/") for k in attached["summary"])
    (art,) = attached["artifacts"]
    assert art.type == "evaluation"
    assert sorted(e.path for e in art.manifest.contents) == ["eval.json", "eval/report.json", "eval/report.md"]


@pytest.mark.slow
def test_wandb_is_quiet_by_default_and_every_offline_folder_is_listed(tmp_path):
    """quiet (the default): one robustrain line when tracking starts, wandb's own output silenced (a fresh process
    without the suite's WANDB_SILENT); the sync command names every offline folder of the run (first training,
    resume), oldest first. quiet=False gives wandb's own lines back."""
    import os
    import subprocess
    import sys

    script = ("import sys\nfrom robustrain.tracking import WandbLogger\nfor i in range(2):\n"
              "    l = WandbLogger(sys.argv[1], mode='offline', name='q', quiet=sys.argv[2] == 'quiet')\n"
              "    l.start()\n    command = l.finish(announce=False)\nprint('COMMAND', command)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_MODE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = {}
    for how in ("quiet", "loud"):
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / how), how], env=env, capture_output=True,
                              text=True, timeout=120, check=True)
        out[how] = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    quiet = [ln for ln in out["quiet"] if not ln.startswith("COMMAND")]
    assert len(quiet) == 2 and all(ln.startswith("wandb: offline run ") for ln in quiet), quiet
    assert len(out["loud"]) > 2 * len(out["quiet"])  # wandb's own banner and sync hints
    dirs = json.loads((tmp_path / "quiet" / "wandb_run.json").read_text())["sync_dirs"]
    assert len(dirs) == 2 and out["quiet"][-1] == "COMMAND wandb sync " + " ".join(dirs)


def test_untracked_runs_and_other_ranks_stay_off(tmp_path, monkeypatch):
    from robustrain.tracking import WandbLogger, attach_report

    (tmp_path / "eval.json").write_text("{}")
    assert attach_report(tmp_path, tmp_path / "eval.json") is None  # never tracked
    monkeypatch.setenv("RANK", "1")
    logger = WandbLogger(tmp_path / "r1", mode="offline")
    logger.start()
    assert logger.run is None and not (tmp_path / "r1").exists()


def test_mode_resolution_never_waits_on_a_network(tmp_path, monkeypatch):
    import socket

    from robustrain.tracking import resolve_mode

    def no_network(*args, **kwargs):
        raise AssertionError("auto mode without an API key must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled" and resolve_mode("offline") == "offline"  # the config wins
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        resolve_mode("auto")


def test_wandb_config_is_validated():
    from robustrain.config import load_config

    with pytest.raises(ConfigError, match="Did you mean 'offline'"):
        load_config(QUICK, ["wandb.mode=ofline"])
    cfg = load_config(QUICK, ["wandb.tags=[a, b]", "wandb.entity=me"])
    assert cfg.wandb.tags == ["a", "b"] and cfg.wandb.entity == "me" and cfg.wandb.mode == "auto"


# -- reports ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_draws_and_summarises_run_folders(tracked_run, tmp_path, capsys):
    assert main(["report", str(tracked_run)]) == 0
    out = tracked_run / "report"
    for name in ("accuracy", "training", "regularisers", "monitor"):
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    md = (out / "report.md").read_text()
    summary = json.loads((tracked_run / "summary.json").read_text())
    last = next(r for r in summary["test"] if r["checkpoint"] == "last")
    best = next(r for r in summary["test"] if r["checkpoint"] == "best")
    assert f"{100 * best['clean_acc']:.2f} / {100 * last['clean_acc']:.2f}" in md  # fractions shown in percent
    assert "**catastrophic_overfitting**" in md and "1×CO" in md
    assert "![accuracy](accuracy.png)" in md

    other = tmp_path / "other"
    shutil.copytree(tracked_run, other, ignore=shutil.ignore_patterns("wandb", "report", "*.pt"))
    with (other / "metrics.jsonl").open("a") as f:  # a robust-overfitting declaration, as the monitor writes one
        f.write(json.dumps({"kind": "event", "event": "robust_overfitting", "time": 0.0, "epoch": 2, "step": 4,
                            "action": "warn", "message": "robust overfitting: test line"}) + "\n")
    assert main(["report", str(tracked_run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| run " in md and "| other " in md and "1×CO, 1×RO" in md
    assert "other, epoch 2.00 (step 4): **robust_overfitting** — robust overfitting: test line" in md
    assert main(["report", str(tracked_run), str(other)]) == 2  # several runs need --out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_report_reads_run_folders_of_the_old_percent_format(tracked_run, tmp_path):
    """summary.json and eval.json written before the units convention (percent, no "units" key) give the same report
    as the new format (fractions)."""
    new, old = tmp_path / "new" / "run", tmp_path / "old" / "run"
    for d in (new, old):
        shutil.copytree(tracked_run, d, ignore=shutil.ignore_patterns("wandb", "report", "*.pt"))
        (d / "eval.json").write_text(json.dumps({"n_ex": 10, "clean_acc": 0.9, "autoattack_acc": 0.4, "epoch": 2,
                                                 "units": "accuracies are fractions in [0, 1]"}))
    summary = json.loads((old / "summary.json").read_text())
    summary.pop("units")
    for row in summary["test"]:
        for k in [k for k in row if k.endswith("_acc")]:
            row[k] = round(100 * row[k], 2)
    (old / "summary.json").write_text(json.dumps(summary))
    (old / "eval.json").write_text(json.dumps({"n_ex": 10, "clean_acc": 90.0, "autoattack_acc": 40.0, "epoch": 2}))
    texts = {}
    for d in (new, old):
        assert main(["report", str(d), "--out", str(d.parent / "report"), "--title", "t"]) == 0
        texts[d.parent.name] = (d.parent / "report" / "report.md").read_text().replace(str(d.parent), "DIR")
    assert texts["old"] == texts["new"] and "clean_acc 90.00%, autoattack_acc 40.00%" in texts["new"]


def test_results_tables_come_from_run_folders(tracked_run, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_results_tables", ROOT / "scripts" / "make_results_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    seed1 = tmp_path / "seed1"
    shutil.copytree(tracked_run, seed1, ignore=shutil.ignore_patterns("wandb", "report", "*.pt"))
    summary = json.loads((seed1 / "summary.json").read_text())
    for row in summary["test"]:
        row["clean_acc"] += 0.02  # a second "seed" 2 points better: mean +1, std √2
    (seed1 / "summary.json").write_text(json.dumps(summary))
    cfg = yaml.safe_load((seed1 / "config.yaml").read_text())
    cfg["seed"] = 1
    (seed1 / "config.yaml").write_text(yaml.safe_dump(cfg))
    text = mod.tables([str(tracked_run), str(seed1)], "t", "cmd", "test machine")
    last = next(r for r in json.loads((tracked_run / "summary.json").read_text())["test"] if r["checkpoint"] == "last")
    assert f"{100 * last['clean_acc'] + 1:.2f} ± {2 ** 0.5:.2f}" in text
    assert "| 0,1 " in text and "1/2" not in text and "2/2" in text  # both runs declared CO


# -- the sweep recipe -------------------------------------------------------------------------------------------
def test_every_sweep_combination_is_a_valid_robustrain_run():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    from robustrain.cli import build_parser
    from robustrain.config import load_config
    from robustrain.cli.sweep import train_argv

    sweep = yaml.safe_load(SWEEP.read_text())
    assert "${args_no_hyphens}" in sweep["command"] and (ROOT / sweep["program"]).is_file()
    grid = sweep["parameters"]
    combos = [{"method": m, "eps": e, "seed": s} for m in grid["method"]["values"] for e in grid["eps"]["values"]
              for s in grid["seed"]["values"]]
    assert len(combos) == 54
    names = set()
    for combo in combos:
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in combo.items()}})["args_no_hyphens"]
        argv = train_argv(args)
        ns = build_parser().parse_args(argv)
        cfg = load_config(ns.config, ns.set)
        assert cfg.threat.eps == pytest.approx(combo["eps"] / 255)
        assert cfg.seed == combo["seed"] and cfg.wandb.group == f"cifar10_{combo['method']}_eps{combo['eps']}"
        names.add(ns.run_dir)
        specific = ROOT / "configs" / f"cifar10_{combo['method']}_eps{combo['eps']}.yaml"
        if combo["eps"] != 8 and specific.exists():  # the paper's settings for this radius
            assert Path(ns.config).resolve() == specific.resolve()  # the bundled recipes are configs/
            continue
        # otherwise every step size keeps its ratio to ε of the ε = 8/255 recipe (FGSM-RS 1.25ε, N-FGSM ε, PGD ε/4)
        base = load_config(ROOT / "configs" / f"cifar10_{combo['method']}.yaml")
        for got, ref in ((cfg.attack, base.attack), (cfg.validation.attack, base.validation.attack),
                         (cfg.eval.attack, base.eval.attack)):
            assert got["step"] / cfg.threat.eps == pytest.approx(ref["step"] / base.threat.eps)
    assert len(names) == 54  # one run folder per combination
    with pytest.raises(ConfigError, match="known methods"):
        train_argv(["method=fgsm_rss", "eps=8", "seed=0"])
