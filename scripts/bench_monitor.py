#!/usr/bin/env python3
"""Cost of the overfitting monitor at its default settings, as a fraction of training time.

Default monitor: one check per epoch of 256 held-out images (clean, FGSM, PGD-10, gradient alignment).
For each setting this times training steps and checks in one process (interleaved, medians) and reports
check_time / (steps_per_epoch · step_time + check_time).

    python scripts/bench_monitor.py --mnist-root DIR [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from robustrain.config import load_config
from robustrain.build import build_trainer
from robustrain.training.monitor import OverfitMonitor


def bench(cfg_path: str, overrides: list[str], steps: int, repeats: int) -> dict:
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    cfg = load_config(cfg_path, [*overrides, "monitor.enabled=true", "monitor.action=warn", "monitor.every=null",
                                 "monitor.n_check=256", "monitor.pgd_steps=10", "train.progress=false",
                                 f"out_dir={tmp}"])
    trainer, data = build_trainer(cfg, tmp / "run")
    monitor = next(cb for cb in trainer.callbacks if isinstance(cb, OverfitMonitor))
    batches = list(data.train.iterate(0))[: steps]
    step_t, check_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, y in batches:
            trainer.train_step(x, y)
        step_t.append((time.perf_counter() - t0) / len(batches))
        t0 = time.perf_counter()
        monitor.check(trainer)
        check_t.append(time.perf_counter() - t0)
    s, c = statistics.median(step_t), statistics.median(check_t)
    epoch = trainer.steps_per_epoch * s
    return {"config": cfg_path, "overrides": overrides, "steps_per_epoch": trainer.steps_per_epoch,
            "step_seconds": s, "check_seconds": c, "epoch_seconds": epoch, "fraction": c / (epoch + c)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist-root", required=True)
    p.add_argument("--cifar-root", help="CIFAR-10 (binary or torchvision layout); skipped when absent")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = [bench("configs/mnist_fgsm_monitor.yaml", [f"data.root={args.mnist_root}", "train.eps_warmup_epochs=0"],
                  args.steps, args.repeats)]
    if args.cifar_root:
        rows.append(bench("configs/cifar10_fgsm_rs.yaml", [f"data.root={args.cifar_root}", "model.kwargs={width: 16}"],
                          args.steps, args.repeats))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| setting | step (s) | steps/epoch | epoch (s) | check (s) | monitor share of training |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} {' '.join(r['overrides'][1:])} | {r['step_seconds']:.4f} | {r['steps_per_epoch']} | "
              f"{r['epoch_seconds']:.1f} | {r['check_seconds']:.2f} | {100 * r['fraction']:.2f} % |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
