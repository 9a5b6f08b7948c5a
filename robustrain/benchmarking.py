"""The benchmark kit the scripts in ``scripts/bench_*.py`` share: machine and environment, batches, interleaved
timing, and the report helpers. (Benchmarks, not timed tests: they measure, they do not assert.)

Public API:

* constants: :data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`, :data:`EPS` (8/255).
* environment: :func:`cpu_model`, :func:`load_avg`, :func:`machine`, :func:`environment`, :class:`CpuMeter` (the
  CPU other processes use), :func:`git_commit` (:func:`robustrain.provenance.git_commit`).
* batches and models: :func:`load_batch` (random or CIFAR-10 images), :class:`OneBatch` (the loader a Trainer
  needs when only ``train_step`` is called), :func:`sgd`.
* hand-written baselines: :func:`handwritten_fgsm_step` (Wong et al.'s FGSM-RS loop), :func:`handwritten_pgd_step`
  (a Madry-style PGD-AT loop), :data:`FGSM_STEP`, :data:`PGD_STEP`.
* timing: :func:`sync`, :func:`run_interleaved` (contenders interleaved in every repeat, the order rotating),
  :func:`summarise` (per-contender medians and paired ratios baseline / contender), :func:`paired_ratio_rows`
  (contender / base).
* reports: :func:`step_benchmark_parser` (the options every per-step cost benchmark shares), :func:`ratio_rows`
  (markdown rows of a paired-ratio table), :func:`write_report` (print; with ``--out`` write markdown + JSON),
  :func:`stamp` (torch version, commit, command and date for a results file), :func:`publish` (write the JSON and
  the rendered markdown where asked, print the markdown).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .provenance import git_commit as _git_commit
from .provenance import package_version

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
EPS = 8 / 255


# -- environment -------------------------------------------------------------------------------------
def git_commit() -> str:
    """The short hash of the checkout (``-dirty`` with uncommitted changes), or ``unknown``."""
    return _git_commit(short=True) or "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_avg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine(threads: int) -> str:
    """A one-line description of the CPU for a report."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {threads} thread(s)"


def environment(*, gpu: bool = False) -> dict[str, Any]:
    """Software, machine and command of a benchmark (``gpu``: also the GPU, CUDA and Triton versions)."""
    env = {
        "torch": torch.__version__, "torchattacks": package_version("torchattacks"), "python": platform.python_version(),
        "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "load_avg_start": load_avg(),
        "commit": git_commit(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
    if gpu and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        try:
            import triton
            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    return env


class CpuMeter:
    """CPU time used by other processes, in cores, from /proc/stat minus this process's own time."""

    def __init__(self) -> None:
        self.ok = Path("/proc/stat").exists()
        self.hz = os.sysconf("SC_CLK_TCK") if self.ok else 100

    def sample(self) -> tuple[float, float]:
        if not self.ok:
            return 0.0, 0.0
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)  # all but idle and iowait
        own = sum(int(v) for v in Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[11:13])
        return (busy - own) / self.hz, time.monotonic()

    @staticmethod
    def cores(a: tuple[float, float], b: tuple[float, float]) -> float:
        return max(0.0, (b[0] - a[0]) / max(b[1] - a[1], 1e-9))

    def wait_idle(self, timeout: float, threshold: float = 0.1) -> float:
        """Wait until others use < ``threshold`` cores over one second, or ``timeout`` passed; return the last level."""
        deadline = time.monotonic() + timeout
        level = float("nan")
        while True:
            a = self.sample()
            time.sleep(1.0)
            level = self.cores(a, self.sample())
            if level < threshold or time.monotonic() >= deadline:
                return level


# -- batches and models ------------------------------------------------------------------------------
def load_batch(batch: int, seed: int, data_root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` uniform random 3x32x32 images and labels, or (``data_root``) random CIFAR-10 training images."""
    gen = torch.Generator().manual_seed(seed)
    if data_root is None:
        return torch.rand(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    from .data.cifar import read_cifar10

    ds = read_cifar10(data_root, train=True)
    idx = torch.randperm(ds.images.shape[0], generator=gen)[:batch]
    return ds.images[idx].float().div_(255), ds.labels[idx].clone()


class OneBatch:
    """The Trainer needs a loader only for ``fit``; ``train_step`` is called directly in the benchmarks."""

    def __len__(self) -> int:
        return 1

    def iterate(self, epoch: int, start_batch: int = 0):
        return iter(())


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


# -- hand-written baselines -------------------------------------------------------------------------
PGD_STEP = 2 / 255
FGSM_STEP = 10 / 255  # Wong et al.: alpha = 1.25 eps, robustrain's FGSM-RS default


def clamp(X: torch.Tensor, lower_limit: torch.Tensor, upper_limit: torch.Tensor) -> torch.Tensor:
    return torch.max(torch.min(X, upper_limit), lower_limit)


def handwritten_fgsm_step(model: torch.nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, y: torch.Tensor,
                          epsilon: float = EPS, alpha: float = FGSM_STEP) -> float:
    """One step of locuslab/fast_adversarial CIFAR10/train_fgsm.py (no AMP; the model normalises inside)."""
    lower_limit, upper_limit = torch.zeros_like(X), torch.ones_like(X)
    delta = torch.zeros_like(X).uniform_(-epsilon, epsilon)
    delta.data = clamp(delta, lower_limit - X, upper_limit - X)
    delta.requires_grad = True
    output = model(X + delta)
    loss = F.cross_entropy(output, y)
    loss.backward()  # weight gradients too: the reference code pays for them and zeroes them below
    grad = delta.grad.detach()
    delta.data = torch.clamp(delta + alpha * torch.sign(grad), -epsilon, epsilon)
    delta.data = clamp(delta, lower_limit - X, upper_limit - X)
    delta = delta.detach()
    output = model(X + delta)
    loss = F.cross_entropy(output, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def handwritten_pgd_step(model: torch.nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, y: torch.Tensor,
                         steps: int = 10, epsilon: float = EPS, alpha: float = PGD_STEP) -> float:
    """One PGD-AT step as the usual research loop writes it: random start, ``steps`` signed-gradient steps, each a
    full ``loss.backward()`` (weight gradients too), then the training forward/backward and the SGD step."""
    delta = torch.zeros_like(X).uniform_(-epsilon, epsilon)
    delta.data = clamp(delta, -X, 1 - X)
    delta.requires_grad = True
    for _ in range(steps):
        loss = F.cross_entropy(model(X + delta), y)
        loss.backward()
        grad = delta.grad.detach()
        delta.data = clamp(delta + alpha * torch.sign(grad), -epsilon * torch.ones_like(X), epsilon * torch.ones_like(X))
        delta.data = clamp(delta, -X, 1 - X)
        delta.grad.zero_()
    delta = delta.detach()
    loss = F.cross_entropy(model(X + delta), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


# -- timing ------------------------------------------------------------------------------------------
def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_interleaved(contenders: dict[str, Callable[[], object]], warmup: int, repeats: int, label: str,
                    wait_idle: float = 0.0, *, device: str | torch.device = "cpu",
                    progress: bool = False) -> tuple[dict[str, list[float]], list[float]]:
    """Per-contender seconds of each repeat, and the cores other processes used during each repeat.

    Each contender is called ``warmup`` times untimed, then every repeat calls all of them once, the order rotating
    from repeat to repeat, so that load from other processes hits all of them alike. ``progress``: print each
    repeat's times."""
    names = list(contenders)
    for name in names:
        t0 = time.perf_counter()
        for _ in range(warmup):
            contenders[name]()
        sync(device)
        print(f"  [{label}] warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    meter = CpuMeter()
    times: dict[str, list[float]] = {n: [] for n in names}
    others: list[float] = []
    for r in range(repeats):
        if wait_idle > 0:
            meter.wait_idle(wait_idle)
        order = names[r % len(names):] + names[: r % len(names)]
        a = meter.sample()
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            contenders[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        others.append(round(meter.cores(a, meter.sample()), 2))
        if progress:
            print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names), flush=True)
    print(f"  [{label}] cores used by other processes during each repeat: {others}", flush=True)
    return times, others


def summarise(times: dict[str, list[float]], baseline: str, batch: int) -> dict[str, dict]:
    """Per contender: its times, median / min / max, images/s and the paired ratios baseline time / its time."""
    out = {}
    base = times[baseline]
    for name, ts in times.items():
        ratios = [b / t for b, t in zip(base, ts)]
        med = statistics.median(ts)
        out[name] = {
            "seconds": ts,
            "median_s": med,
            "min_s": min(ts),
            "max_s": max(ts),
            "images_per_s": batch / med,
            "ratio_vs_baseline": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                  "of_fastest_runs": min(base) / min(ts), "per_repeat": ratios},
        }
    return out


def paired_ratio_rows(times: dict[str, list[float]], bases: dict[str, str],
                      targets: dict[str, float]) -> list[dict[str, Any]]:
    """One row per contender: median and min seconds, and the paired ratios contender time / its base's time."""
    rows = []
    for n, ts in times.items():
        base = times[bases[n]]
        ratios = [t / b for t, b in zip(ts, base)]
        rows.append({"contender": n, "base": bases[n], "median_s": statistics.median(ts), "min_s": min(ts),
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "ratio_of_fastest": min(ts) / min(base), "target": targets.get(n)})
    return rows


# -- reports -----------------------------------------------------------------------------------------
def step_benchmark_parser(doc: str, *, warmup: int) -> argparse.ArgumentParser:
    """The options every per-step cost benchmark shares (model size, repeats, threads, data, seed, output)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16, help="PreActResNet-18 width (64 in the papers)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=9, help="timed steps per contender")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps per contender before timing")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder with cifar-10-batches-bin/ for a real batch (default: uniform random images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="markdown report (a .json with the raw times beside it)")
    return p


def ratio_rows(rows: list[dict], base_column: bool = False) -> list[str]:
    """Markdown rows of the paired-ratio table (the contender's base in a column when ``base_column``)."""
    out = []
    for r in rows:
        target = f"≤ {r['target']:.2f}× " + ("✓" if r["ratio_median"] <= r["target"] else "✗") if r["target"] else ""
        base = f" {r['base']} |" if base_column else ""
        out.append(f"| {r['contender']} |{base} {r['median_s']:.3f} | {r['ratio_median']:.2f}× | "
                   f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f} | {r['ratio_of_fastest']:.2f}× | {target} |")
    return out


def write_report(args: argparse.Namespace, lines: list[str], times: Any, rows: list[dict]) -> None:
    """Print the markdown report; with ``--out`` also write it and the raw times (``.json`` beside it)."""
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "times": times, "rows": rows}, indent=2))


__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "CpuMeter", "EPS", "FGSM_STEP", "OneBatch", "PGD_STEP", "clamp",
    "handwritten_fgsm_step", "handwritten_pgd_step", "cpu_model", "environment", "git_commit",
    "load_avg", "load_batch", "machine", "paired_ratio_rows", "ratio_rows", "run_interleaved", "sgd",
    "step_benchmark_parser", "summarise", "sync", "write_report",
]


def stamp() -> dict[str, Any]:
    """What a results file must carry besides its figures: torch version, commit, the command's arguments, the date."""
    return {"torch": torch.__version__, "git_commit": git_commit(), "argv": sys.argv,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def publish(out: dict, render: Callable[[dict], str], json_path: Path | None, md_path: Path | None) -> None:
    """Write ``out`` as JSON to ``json_path`` and ``render(out)`` to ``md_path`` (each when given); print the markdown."""
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    md = render(out)
    if md_path:
        Path(md_path).write_text(md)
    print(md)
