#!/usr/bin/env python
"""The GPU check (issue 19): everything robustrain has never run on a GPU, in one command of at most 8 minutes.

Stages, each in its own process with its own time limit, each with a line in the report even when it fails or is
skipped (a failed stage never stops the later ones):

1. ``environment``: GPU, driver, torch / triton / CUDA versions.
2. ``kernel parity``: ``pytest -m gpu``: the Triton kernels against their PyTorch reference on CUDA.
3. ``fused-step bandwidth``: ``scripts/bench_kernels.py --mode gpu``: each fused kernel's achieved bandwidth
   against the GPU's peak (goal: ≥ 80 % of HBM bandwidth), and PGD-10 with the fused step against the reference.
4. ``PGD-10 throughput``: ``scripts/bench_attack.py --only pgd``: torchattacks.PGD against robustrain's PGD with
   the reference step (eager), the fused step and ``compile=True``, PreActResNet-18 width 64, batch 512.
5. ``CIFAR-10 FGSM-RS``: ``robustrain train -c configs/cifar10_fgsm_rs.yaml`` (PreActResNet-18, 15 epochs, bf16,
   channels_last, compiled, data on the GPU) with its wall time, then ``robustrain eval`` (PGD-50-10 and standard
   AutoAttack) on the first 1,000 test images (goal: ≥ 43 % AutoAttack in ≤ 60 s of training).
6. ``DDP smoke``: ``torchrun --nproc_per_node=1 -m robustrain.cli train`` on NCCL (one GPU): DistributedDataParallel
   starts, trains, checkpoints and evaluates.

Stage 5's CIFAR-10: ``--data-root``, else ``data/cifar10``, else rebuilt from the lossless parts ``--prepare`` packs
into ``.gpu_data/`` (the device machine has no internet; see "Running it on a lent GPU"); without it the stage is
reported as not run (the others run).

The report goes to ``results/gpu/<gpu-name>.md`` (and to ``$OUT`` when that is set, with the stages' logs).
Exit status: 0 when every stage passed, 1 otherwise (the report is written either way).

Dry run (``--dry-run`` or ``GPU_CHECK_DRY=1``): every stage tiny, on the CPU (the kernels through the Triton
interpreter, a one-epoch run on 64 CIFAR-10 images or the digits data when CIFAR-10 is missing, gloo instead of NCCL);
``tests/test_gpu_check.py`` runs it. Its report is ``results/gpu/cpu-dry-run.md`` unless ``--out-dir`` says.

Running it on a lent GPU (the device tool: 64 MiB travel per call, no internet there):
    scripts/gpu_check.sh --prepare      # here: wheels of torchattacks and pyautoattack into .whl/, CIFAR-10 as
                                        # three lossless parts of about 41 MiB into .gpu_data/cifar10/part{1,2,3}
    # device calls on one warm machine: parts 1 and 2 ride along on their own calls (they stay there, ignored),
    # the third call carries part 3 and the wheels and runs the check:
    run(command="true", carry=[".gpu_data/cifar10/part1"])
    run(command="true", carry=[".gpu_data/cifar10/part2"])
    run(command="bash scripts/gpu_check.sh", carry=[".gpu_data/cifar10/part3", ".whl"], timeout_s=560)
With only some parts there, the report says which are missing and stage 5 is reported as not run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 470  # the whole check, under the 8-minute goal with room for start-up
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
PARTS = {"part1": BATCHES[0:2], "part2": BATCHES[2:4], "part3": BATCHES[4:6]}
RECORD = 3073  # one label byte, 3 x 32 x 32 image bytes


@dataclass
class Stage:
    name: str
    commands: list[list[str]]
    timeout: float
    env: dict = field(default_factory=dict)
    skip: str | None = None          # a reason not to run it
    summary: callable = None         # (stage output text, work dir) -> lines for the report


@dataclass
class Outcome:
    name: str
    status: str                      # passed, FAILED, TIMED OUT, not run
    seconds: float
    detail: list[str]
    log: str


# -- CIFAR-10 for the device: lossless PNG parts --------------------------------------------------------------
def _cifar_bin(root: Path) -> Path | None:
    """The ``cifar-10-batches-bin`` folder under ``root`` (or ``root`` itself) when it holds all six batches."""
    for d in (root / "cifar-10-batches-bin", root):
        if all((d / f"{b}.bin").is_file() for b in BATCHES):
            return d
    return None


def pack_cifar10(src: Path, dest: Path) -> list[Path]:
    """Write each batch of the official binary CIFAR-10 under ``src`` as one lossless PNG strip (10,000 x 32 rows
    of 32 RGB pixels), its labels and the SHA-256 of the original file, two batches per part folder of ``dest``."""
    import numpy as np
    from PIL import Image

    bin_dir = _cifar_bin(src)
    if bin_dir is None:
        raise SystemExit(f"no cifar-10-batches-bin with {', '.join(BATCHES)} under {src}")
    written = []
    for part, names in PARTS.items():
        out = dest / part
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            blob = (bin_dir / f"{name}.bin").read_bytes()
            rec = np.frombuffer(blob, np.uint8).reshape(-1, RECORD)
            strip = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).reshape(-1, 32, 3)
            Image.fromarray(np.ascontiguousarray(strip)).save(out / f"{name}.png", optimize=True)
            (out / f"{name}.labels").write_bytes(rec[:, 0].tobytes())
            (out / f"{name}.sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n")
        written.append(out)
    return written


def unpack_cifar10(parts: Path, dest: Path) -> tuple[Path | None, list[str]]:
    """Rebuild ``dest/cifar-10-batches-bin`` from the parts under ``parts``, each file checked against the SHA-256
    of its original; returns the folder (None unless all six batches are there) and the batches missing."""
    import numpy as np
    from PIL import Image

    out = dest / "cifar-10-batches-bin"
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in BATCHES:
        target = out / f"{name}.bin"
        found = sorted(parts.glob(f"part*/{name}.png"))
        if target.is_file():
            continue
        if not found:
            missing.append(name)
            continue
        png = found[0]
        strip = np.array(Image.open(png).convert("RGB"))
        images = strip.reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2).reshape(-1, RECORD - 1)
        labels = np.frombuffer(png.with_suffix(".labels").read_bytes(), np.uint8)[:, None]
        blob = np.concatenate([labels, images], axis=1).tobytes()
        want = png.with_suffix(".sha256").read_text().strip()
        if hashlib.sha256(blob).hexdigest() != want:
            raise SystemExit(f"{png}: the rebuilt {name}.bin does not match the original's SHA-256 {want}")
        target.write_bytes(blob)
    return (out if not missing else None), missing


# -- report lines from the stages' outputs ----------------------------------------------------------------------
def _last_lines(text: str, n: int) -> list[str]:
    return [l for l in text.strip().splitlines() if l.strip()][-n:]


def _summary_env(text: str, _work: Path) -> list[str]:
    return [l for l in text.splitlines() if l.startswith("- ")]


def _summary_pytest(text: str, _work: Path) -> list[str]:
    return _last_lines(text, 1)


def _summary_table(text: str, _work: Path) -> list[str]:
    """The markdown tables a benchmark printed."""
    return [l for l in text.splitlines() if l.startswith("|")] or _last_lines(text, 5)


def _summary_pgd(text: str, work: Path) -> list[str]:
    path = work / "pgd.json"
    if not path.is_file():
        return _last_lines(text, 8)
    pgd = json.loads(path.read_text())["pgd"]
    lines = [f"baseline {pgd['baseline']}, {pgd['repeats']} interleaved repeats", "",
             "| contender | median s | images/s | × torchattacks (median [range]) |", "|---|---|---|---|"]
    for name, c in pgd["contenders"].items():
        r = c["ratio_vs_baseline"]
        lines.append(f"| {name} | {c['median_s']:.4f} | {c['images_per_s']:.0f} | {r['median']:.2f} "
                     f"[{r['min']:.2f}, {r['max']:.2f}] |")
    return lines


def _summary_cifar(text: str, work: Path) -> list[str]:
    lines = []
    summary = work / "cifar_run" / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        lines.append(f"- training wall time: {s.get('train_seconds')} s (goal ≤ 60 s)")
    report = work / "cifar_eval" / "report.json"
    if report.is_file():
        r = json.loads(report.read_text())
        for st in r["stages"]:
            lines.append(f"- {st['name']}: {100 * st['robust_acc']:.2f} % ({st['n_robust']}/{r['n_ex']}), "
                         f"{st['seconds']:.1f} s")
        aa = r["accuracy"].get("autoattack")
        if aa is not None:
            lines.append(f"- AutoAttack ({'standard' if r['standard'] else 'NOT standard'}): {100 * aa:.2f} % "
                         "(goal ≥ 43 %)")
    return lines or _last_lines(text, 8)


def _summary_ddp(text: str, work: Path) -> list[str]:
    lines = [l for l in text.splitlines() if l.startswith("- backend")]
    summary = work / "ddp_run" / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        lines.append(f"- robustrain train under torchrun (one process, so no process group: the single-process path): "
                     f"{s.get('train_seconds')} s; test: "
                     + ", ".join(f"{k} {100 * v:.2f} %" for k, v in (s.get("test") or [{}])[-1].items()
                                 if k.endswith("acc")))
    return lines or _last_lines(text, 5)


ENV_SNIPPET = r"""
import platform, subprocess, torch
print(f"- python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
try:
    import triton; print(f"- triton {triton.__version__}")
except ImportError as e:
    print(f"- triton missing ({e})")
for mod in ("torchattacks", "pyautoattack"):
    try:
        m = __import__(mod); print(f"- {mod} {getattr(m, '__version__', 'installed')}")
    except ImportError:
        print(f"- {mod} not installed (carry its wheel: scripts/gpu_check.sh --prepare)")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"- GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, capability "
          f"{p.major}.{p.minor}")
    try:
        print("- " + subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                                    "--format=csv,noheader"], capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
else:
    print("- no CUDA device (dry run)")
"""


DDP_SNIPPET = r"""
# One process under torchrun: a process group on NCCL (gloo in the dry run), DistributedDataParallel over a
# robustrain PreActResNet-18, three SGD steps on FGSM-RS examples; DDP's gradient all-reduce must give the
# gradients of the same model without DDP (world size 1: the mean over one rank is the rank's own).
import os, sys, torch, torch.distributed as dist
from robustrain.attacks import build_attack
from robustrain.models import create_model
from robustrain.threat import make_threat

cuda = torch.cuda.is_available() and os.environ.get("GPU_CHECK_DRY") != "1"
dist.init_process_group("nccl" if cuda else "gloo")
dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
torch.manual_seed(0)
width = int(sys.argv[1])
plain = create_model("preact_resnet18", num_classes=10, in_channels=3, width=width).to(dev)
ddp_model = create_model("preact_resnet18", num_classes=10, in_channels=3, width=width).to(dev)
ddp_model.load_state_dict(plain.state_dict())
ddp = torch.nn.parallel.DistributedDataParallel(ddp_model, device_ids=[dev.index] if cuda else None)
attack = build_attack("fgsm_rs", make_threat("linf", 8 / 255), step=10 / 255)
opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (plain, ddp_model)]
gen = torch.Generator(device=dev).manual_seed(0)
worst = 0.0
for step in range(3):
    x = torch.rand(64, 3, 32, 32, device=dev, generator=gen)
    y = torch.randint(0, 10, (64,), device=dev, generator=gen)
    x_adv = attack(plain, x, y, generator=gen).x_adv
    for model, fwd, opt in ((plain, plain, opts[0]), (ddp_model, ddp, opts[1])):
        model.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(fwd(x_adv), y).backward()
    worst = max(worst, max(float((a.grad - b.grad).abs().max()) for a, b in zip(plain.parameters(),
                                                                               ddp_model.parameters())))
    for opt in opts:
        opt.step()
total = torch.ones(1, device=dev)
dist.all_reduce(total)
print(f"- backend {dist.get_backend()}, world size {dist.get_world_size()}, all_reduce -> {total.item():.0f}; "
      f"largest |grad DDP - grad plain| over 3 steps: {worst:.2e}")
dist.destroy_process_group()
if worst > 1e-4 or total.item() != 1:
    sys.exit("DDP gradients differ from the plain model's")
"""


def gpu_name(dry: bool) -> str:
    if dry:
        return "cpu-dry-run"
    try:
        import torch

        if torch.cuda.is_available():
            return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-").lower()
    except ImportError:
        pass
    return "no-gpu"


# -- the stages -----------------------------------------------------------------------------------------------
def build_stages(args: argparse.Namespace, work: Path, data_root: Path | None, data_note: str) -> list[Stage]:
    py, dry = sys.executable, args.dry_run
    cli = [py, "-m", "robustrain.cli"]
    interp = {"TRITON_INTERPRET": "1"} if dry else {}
    stages = [Stage("environment", [[py, "-c", ENV_SNIPPET]], 60, summary=_summary_env)]

    parity = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_kernels.py",
              "tests/test_data.py"]
    if dry:  # the interpreter runs the kernels on the CPU; one shape, one dtype keeps it tiny
        parity += ["-k", "fused_steps_equal_the_reference and dtype0-shape0"]
    stages.append(Stage("kernel parity (pytest -m gpu)", [parity], 120 if not dry else 90, interp,
                        summary=_summary_pytest))

    bw = [py, "scripts/bench_kernels.py", "--mode", "gpu", "--out", str(work / "kernels")]
    stages.append(Stage("fused-step bandwidth vs peak", [bw + (["--smoke"] if dry else ["--repeats", "5"])], 120,
                        interp, summary=_summary_table))

    pgd = [py, "scripts/bench_attack.py", "--only", "pgd", "--device", "cpu" if dry else "cuda",
           "--json", str(work / "pgd.json")]
    pgd += (["--width", "4", "--batch", "4", "--steps", "2", "--repeats", "1", "--warmup", "1", "--no-compile"]
            if dry else ["--width", "64", "--batch", "512", "--repeats", "5", "--warmup", "2"])
    stages.append(Stage("PGD-10 throughput: torchattacks, eager, fused, compiled", [pgd], 150,
                        summary=_summary_pgd))

    run_dir, eval_dir = work / "cifar_run", work / "cifar_eval"
    if data_root is None and not dry:
        train = None
    elif data_root is None:  # dry run without CIFAR-10: the same commands on digits
        train = cli + ["train", "-c", "configs/quickstart_digits.yaml", "--run-dir", str(run_dir)]
    else:
        train = cli + ["train", "-c", "configs/cifar10_fgsm_rs.yaml", "--run-dir", str(run_dir),
                       "--set", f"data.root={data_root}"]
    if train is not None:
        sets = ["train.progress=false", "wandb.mode=disabled", "model.channels_last=true", "eval.n_ex=1000"]
        if dry:
            sets += ["train.epochs=1", "data.train_subset=64", "data.val_size=32", "eval.n_ex=16",
                     "data.batch_size=32", "validation.attack={name: pgd, steps: 1, restarts: 1}",
                     "eval.attack={name: pgd, steps: 2, restarts: 1}", "data.device=cpu"]
            if data_root is not None:
                sets += ["model.kwargs={width: 4}"]
        else:
            sets += ["train.epochs=15", "train.amp=bf16", "train.compile=true", "data.device=cuda"]
        train += sum((["--set", s] for s in sets), [])
        evaluate = cli + ["eval", str(run_dir), "--checkpoint", "last", "--attack", "pgd,autoattack", "--out",
                          str(eval_dir), "--no-progress", "--steps", "50", "--restarts", "10", "--step", "2/255"]
        evaluate += (["--n-ex", "8", "--aa-steps", "2", "--square-queries", "5", "--steps", "2", "--restarts", "1",
                      "--device", "cpu"] if dry else ["--n-ex", "1000", "--batch-size", "1000"])
        stages.append(Stage("CIFAR-10 FGSM-RS PreActResNet-18: train + PGD-50-10 + AutoAttack", [train, evaluate],
                            300, summary=_summary_cifar))
    else:
        stages.append(Stage("CIFAR-10 FGSM-RS PreActResNet-18: train + PGD-50-10 + AutoAttack", [], 0,
                            skip=f"no CIFAR-10 data: {data_note}", summary=_summary_cifar))

    (work / "ddp_smoke.py").write_text(DDP_SNIPPET)
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    ddp = torchrun + [str(work / "ddp_smoke.py"), "4" if dry else "64"]
    cli_run = torchrun + ["-m", "robustrain.cli", "train", "-c", "configs/quickstart_digits.yaml", "--run-dir",
                          str(work / "ddp_run")]
    cli_run += sum((["--set", s] for s in ["train.progress=false", "wandb.mode=disabled", "train.epochs=1",
                                            "data.train_subset=256", f"data.device={'cpu' if dry else 'cuda'}"]), [])
    stages.append(Stage(f"DDP smoke (torchrun, 1 process, {'gloo' if dry else 'NCCL'})", [ddp, cli_run], 120,
                        {"GPU_CHECK_DRY": "1"} if dry else {}, summary=_summary_ddp))
    return stages


def run_stage(stage: Stage, work: Path, deadline: float, index: int) -> Outcome:
    log = work / f"stage{index}.log"
    if stage.skip:
        log.write_text(stage.skip + "\n")
        return Outcome(stage.name, "not run", 0.0, [stage.skip], log.name)
    t0 = time.perf_counter()
    limit = max(5.0, min(stage.timeout, deadline - time.monotonic()))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get(
        "PYTHONPATH", ""), **stage.env}
    text, status = "", "passed"
    for cmd in stage.commands:
        left = limit - (time.perf_counter() - t0)
        text += "$ " + " ".join(cmd) + "\n"
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, left))
            text += proc.stdout + proc.stderr
            if proc.returncode != 0:
                status = f"FAILED (exit {proc.returncode})"
                break
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"") + (e.stderr or b"")
            text += out.decode(errors="replace") if isinstance(out, bytes) else str(out)
            status = f"TIMED OUT after {limit:.0f} s"
            break
    log.write_text(text)
    seconds = time.perf_counter() - t0
    try:
        detail = stage.summary(text, work) if stage.summary else []
    except Exception as e:  # noqa: BLE001 - a summary must never hide the stage's outcome
        detail = [f"(summary failed: {type(e).__name__}: {e})"]
    if status != "passed":
        detail = detail + ["log tail:"] + ["    " + l for l in _last_lines(text, 12)]
    return Outcome(stage.name, status, seconds, detail, log.name)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def markdown(name: str, outcomes: list[Outcome], args: argparse.Namespace, total: float, data_note: str) -> str:
    lines = [f"# GPU check on {name}", "",
             f"commit {_commit()} · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · total {total:.0f} s "
             f"(budget {BUDGET_S} s){' · DRY RUN on the CPU: tiny sizes, numbers mean nothing' if args.dry_run else ''}",
             "", "```bash", "bash scripts/gpu_check.sh " + " ".join(args.argv), "```", "", f"Data: {data_note}", "",
             "| stage | status | seconds | log |", "|---|---|---|---|"]
    lines += [f"| {o.name} | {o.status} | {o.seconds:.0f} | {o.log} |" for o in outcomes]
    for o in outcomes:
        lines += ["", f"## {o.name}: {o.status}", ""] + (o.detail or ["(no output)"])
    return "\n".join(lines) + "\n"


def find_data(args: argparse.Namespace, work: Path) -> tuple[Path | None, str]:
    """CIFAR-10: the given root, data/cifar10, or rebuilt from the packed parts; else None and why."""
    tried = []
    roots = [args.data_root] if args.data_root else [ROOT / "data" / "cifar10", ROOT / ".gpu_data" / "cifar10-bin"]
    for root in roots:  # an explicit --data-root is the only folder tried (besides the packed parts)
        if _cifar_bin(Path(root)) is not None:
            return Path(root), f"CIFAR-10 from {root}"
        tried.append(str(root))
    parts = args.parts
    if parts.is_dir():
        try:
            found, missing = unpack_cifar10(parts, parts.parent / "cifar10-bin")
        except (OSError, SystemExit, ValueError) as e:
            return None, f"rebuilding CIFAR-10 from {parts} failed: {e}"
        if found is not None:
            return found.parent, f"CIFAR-10 rebuilt from the packed parts in {parts} (SHA-256 checked)"
        return None, (f"packed parts in {parts} lack {', '.join(missing)} (carry every part: see "
                      "scripts/gpu_check.py)")
    return None, f"not found in {', '.join(tried)} and no packed parts in {parts} (scripts/gpu_check.sh --prepare)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_CHECK_DRY") == "1",
                   help="every stage tiny on the CPU (also GPU_CHECK_DRY=1)")
    p.add_argument("--data-root", type=Path, help="folder holding cifar-10-batches-bin/")
    p.add_argument("--parts", type=Path, default=ROOT / ".gpu_data" / "cifar10",
                   help="where --prepare writes the packed CIFAR-10 parts and the check looks for them")
    p.add_argument("--out-dir", type=Path, default=ROOT / "results" / "gpu", help="where <gpu-name>.md goes")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (runs, logs; default /tmp/gpu_check)")
    p.add_argument("--prepare", action="store_true",
                   help="here, before a device call: pack CIFAR-10 (from --data-root or data/cifar10) into .gpu_data/")
    p.add_argument("--only", help="comma-separated stage numbers to run (1-6), e.g. 1,3")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare:
        src = args.data_root or ROOT / "data" / "cifar10"
        for part in pack_cifar10(src, args.parts):
            size = sum(f.stat().st_size for f in part.iterdir()) / 2**20
            print(f"packed {part} ({size:.1f} MiB)")
        return 0
    t0 = time.monotonic()
    deadline = t0 + BUDGET_S
    work = args.work or Path("/tmp/gpu_check" + ("_dry" if args.dry_run else ""))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data_root, data_note = find_data(args, work)
    stages = build_stages(args, work, data_root, data_note)
    chosen = {int(s) for s in args.only.split(",")} if args.only else set(range(1, len(stages) + 1))
    outcomes = []
    for i, stage in enumerate(stages, 1):
        if i not in chosen:
            continue
        print(f"[gpu_check] stage {i}/{len(stages)}: {stage.name} ...", flush=True)
        o = run_stage(stage, work, deadline, i)
        print(f"[gpu_check]   {o.status} in {o.seconds:.0f} s", flush=True)
        outcomes.append(o)
    name = gpu_name(args.dry_run)
    md = markdown(name, outcomes, args, time.monotonic() - t0, data_note)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{name}.md"
    path.write_text(md)
    print(md)
    print(f"wrote {path}")
    out = os.environ.get("OUT")
    if out and Path(out).is_dir():  # on the device machine: what comes back
        shutil.copy(path, Path(out) / path.name)
        with tarfile.open(Path(out) / "gpu_check_logs.tar.gz", "w:gz") as tar:  # logs and small results only
            for f in sorted(work.rglob("*")):
                if f.is_file() and f.suffix in (".log", ".json", ".jsonl", ".md") and f.stat().st_size < 2**22:
                    tar.add(f, arcname=str(f.relative_to(work)))
        print("copied the report and gpu_check_logs.tar.gz to $OUT")
    return 0 if all(o.status == "passed" for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
