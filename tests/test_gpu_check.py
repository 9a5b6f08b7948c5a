"""scripts/gpu_check.sh: the CIFAR-10 packing for the device machine is lossless, a missing data folder leaves the
CIFAR-10 stage reported as not run (the others run), and the dry run executes every stage on the CPU."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _fake_cifar(root: Path, n: int = 40) -> dict[str, bytes]:
    """Six batches in the official binary layout (random labels and pixels, ``n`` records each)."""
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    blobs = {}
    for name in _module().BATCHES:
        rec = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
        rec[:, 0] %= 10
        blobs[name] = rec.tobytes()
        (d / f"{name}.bin").write_bytes(blobs[name])
    return blobs


def test_packed_parts_rebuild_the_original_files_byte_for_byte(tmp_path):
    gc = _module()
    blobs = _fake_cifar(tmp_path / "src")
    parts = gc.pack_cifar10(tmp_path / "src", tmp_path / "parts")
    assert [p.name for p in parts] == ["part1", "part2", "part3"]
    found, missing = gc.unpack_cifar10(tmp_path / "parts", tmp_path / "rebuilt")
    assert missing == [] and found == tmp_path / "rebuilt" / "cifar-10-batches-bin"
    for name, blob in blobs.items():
        assert hashlib.sha256((found / f"{name}.bin").read_bytes()).digest() == hashlib.sha256(blob).digest()
    # a part that did not travel: named, and no data folder handed on
    (tmp_path / "parts" / "part2" / "data_batch_3.png").unlink()
    found, missing = gc.unpack_cifar10(tmp_path / "parts", tmp_path / "again")
    assert found is None and missing == ["data_batch_3"]
    # a corrupted part is refused, not used
    png = tmp_path / "parts" / "part1" / "data_batch_1.sha256"
    png.write_text("0" * 64 + "\n")
    with pytest.raises(SystemExit, match="does not match"):
        gc.unpack_cifar10(tmp_path / "parts", tmp_path / "third")


def test_without_data_the_cifar_stage_is_reported_as_not_run(tmp_path):
    gc = _module()
    args = gc.parse_args(["--data-root", str(tmp_path / "nowhere"), "--parts", str(tmp_path / "no_parts")])
    args.dry_run = False
    root, note = gc.find_data(args, tmp_path)
    assert root is None and "nowhere" in note and "--prepare" in note
    stages = gc.build_stages(args, tmp_path, root, note)
    assert len(stages) == 6
    cifar = [s for s in stages if s.name.startswith("CIFAR-10")][0]
    assert cifar.skip and "no CIFAR-10 data" in cifar.skip
    outcome = gc.run_stage(cifar, tmp_path, deadline=0, index=5)
    assert outcome.status == "not run" and (tmp_path / "stage5.log").is_file()
    assert all(s.skip is None for s in stages if s is not cifar)
    md = gc.markdown("x", [outcome], args, 1.0, note)
    assert "| CIFAR-10 FGSM-RS PreActResNet-18: train + PGD-50-10 + AutoAttack | not run |" in md


@pytest.mark.slow
def test_dry_run_executes_every_stage_on_the_cpu(tmp_path):
    """GPU_CHECK_DRY=1 bash scripts/gpu_check.sh, without CIFAR-10 (the digits stand in): every stage passes and has
    its row and section in the report."""
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--out-dir", str(tmp_path / "out"), "--work",
                           str(tmp_path / "work"), "--data-root", str(tmp_path / "none"), "--parts",
                           str(tmp_path / "no_parts")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    report = (tmp_path / "out" / "cpu-dry-run.md").read_text()
    assert proc.returncode == 0, report + proc.stderr[-3000:]
    rows = [l for l in report.splitlines() if l.startswith("| ") and l.endswith(".log |")]
    assert len(rows) == 6 and all("| passed |" in r for r in rows), rows
    assert "1 passed" in report  # the kernel parity test ran (through the Triton interpreter)
    assert "largest |grad DDP - grad plain|" in report
    assert "AutoAttack (NOT standard)" in report and "torchattacks.PGD" in report
