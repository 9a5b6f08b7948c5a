"""HR's three error sources measured on a run's checkpoint at CPU scale: evasion (test PGD), a natural corruption
(test images with Gaussian noise) and the generalisation gap (the same PGD on the images the run trained on).

    python scripts/holistic_eval.py runs/hr_mnist/hr_seed0 --checkpoint last --n-ex 500 --noise 0.1 0.3 \
        --data-root ../shared/data/mnist --out runs/hr_mnist/hr_seed0/eval_holistic_last.json

Writes one JSON row (accuracies as fractions): ``clean_acc`` and ``pgd_acc`` on the first N test images; for each σ,
``noise<σ>_acc`` (clean accuracy on x + σ·N(0, I) clipped to [0, 1], the noise drawn once with ``--seed``) and
``noise<σ>_pgd_acc`` (the PGD attack run from those noisy images); ``train_clean_acc`` / ``train_pgd_acc`` on the
first N images of the run's training set (its ``data.train_subset`` when set: the images it trained on, in the
loader's epoch-0 order) and ``gap_pgd`` = train PGD − test PGD. The PGD is the run's test attack (``eval.attack``)
unless ``--steps`` / ``--step`` / ``--restarts`` are given; the model is in eval mode (robustrain.evaluate).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import robustrain as rt
from robustrain.build import build_data
from robustrain.config import load_config
from robustrain.data.loader import first_examples


def noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """``x + σ·N(0, I)`` clipped to the image box [0, 1], the noise drawn from its own generator (reproducible)."""
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g).to(x.device)).clamp(0.0, 1.0)


def accuracy(model, x, y, eps: float, pgd: dict, seed: int) -> tuple[float, float]:
    """(clean, PGD) accuracy as fractions."""
    acc = rt.evaluate(model, (x, y), eps=eps, attacks={"pgd": pgd}, seed=seed)["accuracy"]
    robust = next(v for k, v in acc.items() if k.startswith("pgd"))
    return float(acc["clean"]), float(robust)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder")
    p.add_argument("--checkpoint", choices=["best", "last"], default="last")
    p.add_argument("--n-ex", type=int, default=500, help="test images, and training images for the gap")
    p.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.3], help="Gaussian noise σ (images in [0, 1])")
    p.add_argument("--steps", type=int)
    p.add_argument("--step", type=float)
    p.add_argument("--restarts", type=int)
    p.add_argument("--data-root", default=None, help="where the dataset is, if not where training found it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the JSON file to write")
    args = p.parse_args()
    run = Path(args.run)
    overrides = [f"data.root={args.data_root}"] if args.data_root else []
    cfg = load_config(run / "config.yaml", overrides)
    pgd = {"name": "pgd", **{k: v for k, v in cfg.eval.attack.items() if k in ("steps", "step", "restarts")}}
    pgd.update({k: getattr(args, k) for k in ("steps", "step", "restarts") if getattr(args, k) is not None})
    eps = float(cfg.threat.eps)
    model = rt.load_model(run, checkpoint=args.checkpoint)
    data = build_data(cfg)
    x, y = first_examples(data.test, args.n_ex)
    xt, yt = first_examples(data.train, args.n_ex)
    row: dict = {"checkpoint": args.checkpoint, "n_ex": len(y), "n_train": len(yt), "eps": eps,
                 "pgd": pgd, "units": "accuracies are fractions in [0, 1]"}
    row["clean_acc"], row["pgd_acc"] = accuracy(model, x, y, eps, pgd, args.seed)
    for sigma in args.noise:
        row[f"noise{sigma:g}_acc"], row[f"noise{sigma:g}_pgd_acc"] = accuracy(
            model, noisy(x, sigma, args.seed), y, eps, pgd, args.seed)
    row["train_clean_acc"], row["train_pgd_acc"] = accuracy(model, xt, yt, eps, pgd, args.seed)
    row["gap_pgd"] = row["train_pgd_acc"] - row["pgd_acc"]
    Path(args.out).write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k.endswith("_acc") or k == "gap_pgd"}))


if __name__ == "__main__":
    main()
