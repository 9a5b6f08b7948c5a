"""Distributed evaluation: ``torchrun --nproc_per_node=2 -m robustrain.cli eval`` (gloo, CPU) writes the report of one
process: the same per-example flags of every stage and the same JSON apart from run times and the environment."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
TINY = '''from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
'''
# 101 examples in batches of 16: 7 batches per stage (an uneven last one), shared out over 2 ranks in rounds of 2
ARGS = ["--model", "tiny:build", "--weights", "w.pt", "--dataset", "digits", "--eps", "0.06", "--attack",
        "pgd,autoattack", "--steps", "5", "--restarts", "1", "--aa-steps", "5", "--square-queries", "30",
        "--n-ex", "101", "--batch-size", "16", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_model(tmp_path: Path) -> None:
    """A digits MLP trained for 300 full-batch steps: accurate, and broken by some stages and not others."""
    from robustrain.data import load_dataset

    sys.path.insert(0, str(tmp_path))
    (tmp_path / "tiny.py").write_text(TINY)
    import tiny

    ds = load_dataset("digits", None, "train")
    x, y = torch.as_tensor(ds.images).float() / 255, torch.as_tensor(ds.labels).long()
    torch.manual_seed(0)
    model = tiny.build()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    sys.path.remove(str(tmp_path))


def _without_runtime(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k not in ("runtime", "environment")}
    out["stages"] = [{k: v for k, v in s.items() if k != "seconds"} for s in report["stages"]]
    return out


@pytest.mark.slow
def test_torchrun_eval_writes_the_single_process_report(tmp_path):
    _tiny_model(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    single = subprocess.run([sys.executable, "-m", "robustrain.cli", "eval", *ARGS, "--out", "one"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", "-m", "robustrain.cli", "eval", *ARGS, "--out", "two"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert dist.stdout.count("worst-case robust accuracy") == 1  # rank 0 alone prints and writes
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["report.json", "report.md"]

    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert one["runtime"]["world_size"] == 1 and two["runtime"]["world_size"] == 2
    flags = [(s["name"], s["attacked"], s["robust"]) for s in one["stages"]]
    assert flags == [(s["name"], s["attacked"], s["robust"]) for s in two["stages"]]
    assert one["final"]["robust"] == two["final"]["robust"]
    # not trivial: clean, PGD and APGD-CE each break examples; a stage with an odd number of batches leaves rank 1
    # idle in its last round
    n_robust = [s["n_robust"] for s in one["stages"]]
    assert n_robust[0] < 101 and n_robust[1] < n_robust[0] and n_robust[2] < n_robust[0]
    assert any(-(-s["n_attacked"] // 16) % 2 == 1 for s in one["stages"])
    assert _without_runtime(one) == _without_runtime(two)
