#!/usr/bin/env python
"""Benchmark (not a timed test) of the fused attack-step kernels and of the input-gradient-only attack path.

On a CUDA device (``--mode gpu``, the default when CUDA is available):

1. Each kernel (L∞ step, L2 step, L∞ and L2 random start, keep-best copy, ELLE triplets) on a large batch: median
   time, achieved bandwidth = the bytes the operation must move (each input read once, each output written
   once) / time, against the GPU's peak (from a table by device name, and measured by a large device-to-device
   copy), and the speed-up against the eager reference chain (``reference.py``) and against
   ``torch.compile`` of the same reference function.
2. A full PGD-10 attack (L∞ 8/255, step 2/255, one restart, keep-best) on PreActResNet-18 with the fused step
   (``ROBUSTRAIN_KERNELS=triton``) and without it (``=reference``), interleaved repeats.

Writes ``results/benchmarks/kernels_<gpu>.{md,json}``.

On CPU (``--mode cpu``): the input-gradient-only attack that robustrain runs (parameters frozen,
``torch.autograd.grad`` with respect to δ) against the same PGD loop whose gradient comes from a full
``loss.backward()`` with the parameters requiring grad (weight gradients computed too, as in Wong et al.'s
reference code), on a narrow PreActResNet-18 and on a small CNN; contenders interleaved in every repeat
(the order rotates), paired per-repeat ratios, median. Writes ``results/benchmarks/kernels_cpu.{md,json}``.

Examples:
    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_kernels.py --mode cpu --threads 1
    python scripts/bench_kernels.py                      # on a machine with a CUDA GPU
    TRITON_INTERPRET=1 python scripts/bench_kernels.py --mode gpu --smoke   # GPU code path on CPU, tiny, no files
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from robustrain import kernels
from robustrain.attacks import PGD
from robustrain.benchmarking import (CIFAR10_MEAN, CIFAR10_STD, EPS, environment, load_avg, run_interleaved,
                                     summarise, sync)
from robustrain.kernels import reference
from robustrain.models import create_model
from robustrain.threat import L2Ball, LinfBall

ROOT = Path(__file__).resolve().parents[1]
PGD_STEP = 2 / 255
PEAK_GB_S = {  # vendor HBM bandwidth, GB/s (1e9 bytes)
    "H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900,
    "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-SXM4-40GB": 1555, "A100-PCIE-40GB": 1555,
    "L40S": 864, "L4": 300, "A10G": 600, "V100": 900, "RTX 4090": 1008, "RTX 3090": 936,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("gpu", "cpu"), default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (cpu mode)")
    p.add_argument("--batch", type=int, default=None, help="attack batch (default 64 on CPU, 512 on GPU)")
    p.add_argument("--kernel-batch", type=int, default=4096, help="images per kernel call (3x32x32 each, gpu mode)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--width", type=int, default=None, help="PreActResNet-18 width (default 16 on CPU, 64 on GPU)")
    p.add_argument("--amp", choices=("none", "bf16"), default="bf16", help="model autocast dtype (gpu mode)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile of the reference")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no result files (checks the code path)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks", help="folder for the result files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=Path, default=None, metavar="JSON",
                   help="rewrite the markdown file beside an earlier result JSON and exit; measures nothing")
    return p.parse_args(argv)


# -- CPU: input-gradient-only attack against a full backward pass --------------------------------------------
class FullBackwardPGD(PGD):
    """The same PGD loop, but each gradient comes from ``loss.backward()`` with the parameters requiring grad,
    so the backward pass also computes every weight gradient (then thrown away), as in Wong et al.'s code."""

    def input_gradient(self, model, x, delta, y):
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        try:
            delta = delta.detach().requires_grad_(True)
            total, logits, loss = self._loss(model, x, delta, y)
            total.backward()
            return delta.grad, logits.detach(), loss.detach()
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None


def cpu_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    torch.manual_seed(args.seed)
    width = args.width or (4 if args.smoke else 16)
    prn = create_model("preact_resnet18", num_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                       width=width)
    cnn = create_model("small_cnn", num_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                       input_size=32, width=32, hidden=256)
    return {f"preact_resnet18 (width {width})": prn.eval(), "small_cnn (width 32, hidden 256)": cnn.eval()}


def bench_cpu(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    batch = args.batch or (8 if args.smoke else 64)
    steps = 2 if args.smoke else args.steps
    repeats = 2 if args.smoke else args.repeats
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    threat = LinfBall(EPS)
    out = {"batch": batch, "steps": steps, "repeats": repeats, "models": {}}
    for name, model in cpu_models(args).items():
        attacks = {"input_grad_only": PGD(threat, steps=steps, step=PGD_STEP, keep_best=False),
                   "full_backward": FullBackwardPGD(threat, steps=steps, step=PGD_STEP, keep_best=False)}
        contenders = {k: (lambda a=a: a(model, x, y, generator=torch.Generator().manual_seed(1)))
                      for k, a in attacks.items()}
        same = torch.equal(contenders["input_grad_only"]().delta, contenders["full_backward"]().delta)
        times, others = run_interleaved(contenders, args.warmup, repeats, name)
        summary = summarise(times, "full_backward", batch)
        ratio = summary["input_grad_only"]["ratio_vs_baseline"]
        per_repeat_saving = [1 - 1 / r for r in ratio["per_repeat"]]
        out["models"][name] = {
            "parameters": sum(p.numel() for p in model.parameters()), "summary": summary,
            "other_cores_per_repeat": others, "same_perturbation": same,
            "saving_median": statistics.median(per_repeat_saving),
            "saving_range": [min(per_repeat_saving), max(per_repeat_saving)],
        }
        print(f"{name}: input-gradient-only PGD-{steps} takes {1 - out['models'][name]['saving_median']:.3f} of "
              f"the full-backward time (median saving {out['models'][name]['saving_median']:.1%}); "
              f"identical δ: {same}", flush=True)
    return out


def cpu_markdown(env: dict, res: dict) -> str:
    lines = ["# Input-gradient-only attack vs a full backward pass (CPU)", "",
             f"commit: {env['commit']} · date (UTC): {env['date_utc']} · machine: {env['cpu_model']}, "
             f"{env['cpu_count']} cores shared with other jobs · torch threads: {env['threads']} "
             f"(OMP_NUM_THREADS={env['OMP_NUM_THREADS']})", "", "Command:", "", "```bash", env["command"], "```", "",
             f"PGD-{res['steps']} (L∞ 8/255, step 2/255, one random start, last iterate), batch {res['batch']} of "
             "random 3x32x32 images, model in eval mode. `input_grad_only` is robustrain's attack (parameters "
             "frozen, `torch.autograd.grad` with respect to δ); `full_backward` is the same loop with the gradient "
             "from `loss.backward()` and the parameters requiring grad (weight gradients computed and discarded). "
             f"{res['repeats']} repeats, contenders interleaved (order rotating); ratios are paired per repeat.", "",
             "| model | params | full backward, median s | input-grad only, median s | time ratio (median) "
             "| saving median [range] | saving, fastest runs | same δ |", "|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        s = m["summary"]
        lines.append(f"| {name} | {m['parameters']:,} | {s['full_backward']['median_s']:.3f} | "
                     f"{s['input_grad_only']['median_s']:.3f} | "
                     f"{1 / s['input_grad_only']['ratio_vs_baseline']['median']:.3f} | "
                     f"{m['saving_median']:.1%} [{m['saving_range'][0]:.1%}, {m['saving_range'][1]:.1%}] | "
                     f"{1 - 1 / s['input_grad_only']['ratio_vs_baseline']['of_fastest_runs']:.1%} | "
                     f"{m['same_perturbation']} |")
    lines += ["", "Cores used by other processes during each repeat: " + "; ".join(
        f"{n}: {m['other_cores_per_repeat']}" for n, m in res["models"].items()), ""]
    return "\n".join(lines)


# -- GPU: the kernels ------------------------------------------------------------------------------------------
def time_call(fn: Callable[[], object], device: torch.device, repeats: int, inner: int) -> float:
    """Median seconds per call over ``repeats`` timings of ``inner`` back-to-back calls."""
    fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        out.append((time.perf_counter() - t0) / inner)
    return statistics.median(out)


def peak_bandwidth(device: torch.device, smoke: bool) -> dict:
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    table = next((v for k, v in sorted(PEAK_GB_S.items(), key=lambda kv: -len(kv[0])) if k in name), None)
    n = (1 << 16) if smoke else (1 << 28)  # 1 GiB of fp32
    src = torch.empty(n, device=device)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), device, 3 if smoke else 10, 1 if smoke else 5)
    return {"device": name, "table_GB_s": table, "copy_GB_s": 2 * src.numel() * 4 / t / 1e9}


def kernel_cases(x: torch.Tensor, grad: torch.Tensor, delta: torch.Tensor) -> dict[str, tuple]:
    """name -> (fused call, reference function, its arguments, bytes moved)."""
    n, b = x.numel(), x.shape[0]
    ex, eg = x.element_size(), grad.element_size()
    better = torch.rand(b, device=x.device) < 0.5
    best = delta.clone()
    lin, l2 = LinfBall(EPS), L2Ball(0.5)
    return {
        "linf_step": (lambda: kernels.linf_step(delta, grad, x, PGD_STEP, EPS, backend="triton"),
                      reference.linf_step, (delta, grad, x, PGD_STEP, EPS), n * (4 + eg + ex + 4)),
        "l2_step": (lambda: kernels.l2_step(delta, grad, x, 0.1, 0.5, backend="triton"),
                    reference.l2_step, (delta, grad, x, 0.1, 0.5), n * (4 + eg + ex + 4)),
        "linf_random_start": (lambda: kernels.random_start(lin, x, None, backend="triton"),
                              lambda x_: lin.random_init(x_), (x,), n * (ex + 4)),
        "l2_pgd_start": (lambda: kernels.pgd_start(l2, x, None, backend="triton"),
                         lambda x_: l2.pgd_start(x_), (x,), n * (ex + 4)),
        "keep_best": (lambda: _kernels_module().keep_best_copy(best, delta, better),
                      lambda d, bd, m: torch.where(m.view(-1, 1, 1, 1), d, bd), (delta, best, better),
                      int(better.sum()) * (n // b) * 8),
        "elle_triplets": (lambda: kernels.elle_triplets(lin, x, None, backend="triton"),
                          lambda x_: kernels.elle_triplets(lin, x_, None, backend="reference"), (x,), n * 4 * ex),
    }


def _kernels_module():
    from robustrain.kernels import triton_kernels
    return triton_kernels


def bench_kernels(args: argparse.Namespace, device: torch.device) -> dict:
    b = 4 if args.smoke else args.kernel_batch
    repeats, inner = (2, 1) if args.smoke else (15, 20)
    out = {"peak": peak_bandwidth(device, args.smoke), "images": b, "kernels": {}}
    peak = out["peak"]["table_GB_s"] or out["peak"]["copy_GB_s"]
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator(device=device).manual_seed(args.seed)
        x = torch.rand(b, 3, 32, 32, device=device, generator=gen).to(dtype)
        grad = torch.randn(b, 3, 32, 32, device=device, generator=gen).to(dtype)
        delta = reference.linf_step(torch.zeros_like(x, dtype=torch.float32), grad, x, EPS / 2, EPS)
        for name, (fused, ref_fn, ref_args, nbytes) in kernel_cases(x, grad, delta).items():
            t_fused = time_call(fused, device, repeats, inner)
            t_eager = time_call(lambda: ref_fn(*ref_args), device, repeats, inner)
            row = {"bytes": nbytes, "fused_s": t_fused, "eager_s": t_eager, "GB_s": nbytes / t_fused / 1e9,
                   "of_peak": nbytes / t_fused / 1e9 / peak, "speedup_vs_eager": t_eager / t_fused}
            if args.compile and device.type == "cuda":
                try:
                    compiled = torch.compile(ref_fn)
                    t_comp = time_call(lambda: compiled(*ref_args), device, repeats, inner)
                    row.update(compiled_s=t_comp, speedup_vs_compile=t_comp / t_fused)
                except Exception as err:  # report, do not hide
                    row["compile_error"] = f"{type(err).__name__}: {str(err)[:200]}"
            key = f"{name} [{str(dtype).replace('torch.', '')}]"
            out["kernels"][key] = row
            print(f"  {key}: {row['GB_s']:.0f} GB/s ({row['of_peak']:.0%} of peak), "
                  f"x{row['speedup_vs_eager']:.2f} vs eager" +
                  (f", x{row['speedup_vs_compile']:.2f} vs compile" if "speedup_vs_compile" in row else ""),
                  flush=True)
    return out


def bench_pgd(args: argparse.Namespace, device: torch.device) -> dict:
    batch = args.batch or (4 if args.smoke else 512)
    width = args.width or (4 if args.smoke else 64)
    steps = 2 if args.smoke else args.steps
    repeats = 2 if args.smoke else args.repeats
    torch.manual_seed(args.seed)
    model = create_model("preact_resnet18", num_classes=10, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         width=width).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.rand(batch, 3, 32, 32, device=device, generator=gen)
    y = torch.randint(0, 10, (batch,), device=device, generator=gen)
    amp = torch.bfloat16 if args.amp == "bf16" and device.type == "cuda" else None
    attack = PGD(LinfBall(EPS), steps=steps, step=PGD_STEP, keep_best=True, amp_dtype=amp)

    def run(backend: str) -> Callable[[], object]:
        def call():
            os.environ[kernels.ENV_VAR] = backend
            attack(model, x, y, generator=torch.Generator(device=device).manual_seed(1))
            sync(device)
        return call

    contenders = {"reference": run("reference"), "fused": run("triton")}
    try:
        times, others = run_interleaved(contenders, args.warmup, repeats, "pgd")
    finally:
        os.environ.pop(kernels.ENV_VAR, None)
    return {"batch": batch, "width": width, "steps": steps, "amp": str(amp), "repeats": repeats,
            "summary": summarise(times, "reference", batch), "other_cores_per_repeat": others}


def gpu_markdown(env: dict, res: dict) -> str:
    peak = res["kernels"]["peak"]
    lines = [f"# Fused attack-step kernels on {env.get('gpu', 'cpu')}", "",
             f"commit: {env['commit']} · date (UTC): {env['date_utc']} · torch {env['torch']}, triton "
             f"{env.get('triton')}, CUDA {env.get('cuda')}", "", "Command:", "", "```bash", env["command"], "```", "",
             f"Peak bandwidth: {peak['table_GB_s']} GB/s (vendor table), {peak['copy_GB_s']:.0f} GB/s measured by a "
             "1 GiB device copy. Achieved = bytes the operation must move (inputs read once, outputs written once) / "
             f"median time; {res['kernels']['images']} images of 3x32x32 per call.", "",
             "| kernel [image dtype] | MB moved | fused µs | GB/s | of peak | eager µs | × vs eager | "
             "compiled µs | × vs compile |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["kernels"]["kernels"].items():
        comp = (f"{r['compiled_s'] * 1e6:.1f} | {r['speedup_vs_compile']:.2f}" if "compiled_s" in r
                else f"{r.get('compile_error', 'not run')} | -")
        lines.append(f"| {name} | {r['bytes'] / 1e6:.1f} | {r['fused_s'] * 1e6:.1f} | {r['GB_s']:.0f} | "
                     f"{r['of_peak']:.0%} | {r['eager_s'] * 1e6:.1f} | {r['speedup_vs_eager']:.2f} | {comp} |")
    p = res["pgd"]
    s = p["summary"]
    lines += ["", f"PGD-{p['steps']} (keep-best, one restart) on PreActResNet-18 width {p['width']}, batch "
              f"{p['batch']}, autocast {p['amp']}:", "",
              "| step | median s | images/s | × vs reference (median [range]) |", "|---|---|---|---|"]
    for name, r in s.items():
        q = r["ratio_vs_baseline"]
        lines.append(f"| {name} | {r['median_s']:.4f} | {r['images_per_s']:.0f} | {q['median']:.3f} "
                     f"[{q['min']:.3f}, {q['max']:.3f}] |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        data = json.loads(args.report.read_text())
        cpu = "models" in data["results"]
        md = (cpu_markdown if cpu else gpu_markdown)(data["environment"], data["results"])
        args.report.with_suffix(".md").write_text(md)
        print(md)
        return 0
    env = environment(gpu=args.mode == "gpu")
    if args.mode == "cpu":
        res = bench_cpu(args)
        stem = "kernels_cpu"
        md = cpu_markdown(env, res)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu" and not args.smoke:
            sys.exit("--mode gpu needs a CUDA device (use --smoke with TRITON_INTERPRET=1 to check the code path).")
        res = {"kernels": bench_kernels(args, device), "pgd": bench_pgd(args, device)}
        stem = "kernels_" + re.sub(r"[^A-Za-z0-9]+", "_", env.get("gpu", "cpu")).strip("_").lower()
        md = gpu_markdown(env, res)
    env["load_avg_end"] = load_avg()
    print(md)
    if args.smoke:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"environment": env, "results": res}, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(md)
    print(f"wrote {args.out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
