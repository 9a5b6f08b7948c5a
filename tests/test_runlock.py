"""The run-folder lock: a second writer is refused with the holder's pid, command and start time; stale locks
are taken over; the lock goes away on exit, on an exception and on SIGTERM."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustrain.cli.main import main
from robustrain.errors import RobustrainError
from robustrain.runlock import LOCK_NAME, FolderLockedError, acquire, folder_lock

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
TINY = ["train.progress=false", "train.epochs=1", "data.train_subset=64", "data.val_size=50", "eval.n_ex=50",
        "eval.attack={name: pgd, steps: 2, restarts: 1}", "validation.attack={name: pgd, steps: 2, restarts: 1}"]
HOLD = ("import sys, time; from robustrain.runlock import folder_lock\n"
        "with folder_lock(sys.argv[1], 'robustrain train -c holder.yaml'):\n"
        "    print('locked', flush=True); time.sleep(float(sys.argv[2]))\n")


def tiny_args(run: Path, *extra: str) -> list[str]:
    return ["train", "-c", str(QUICK), "--run-dir", str(run), *sum((["--set", o] for o in [*TINY, *extra]), [])]


def folder_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def hold_lock(folder: Path, seconds: float = 30.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_nothing_changes(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"the first run's checkpoint")
    (run / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\n')
    before = folder_hash(run)
    holder = hold_lock(run)
    try:
        for argv in (tiny_args(run), [*tiny_args(run), "--resume"]):
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2, err
            assert f"pid {holder.pid}" in err and "robustrain train -c holder.yaml" in err and "started" in err
            assert "Traceback" not in err and "nothing was written" in err
        assert folder_hash(run) == before
    finally:
        holder.kill()
        holder.wait()


def test_second_acquire_in_the_same_process_is_refused(tmp_path):
    with folder_lock(tmp_path, "first"):
        with pytest.raises(FolderLockedError, match=f"pid {os.getpid()}.*'first'"):
            acquire(tmp_path, "second")
    assert not (tmp_path / LOCK_NAME).exists()  # released and removed


def test_lock_is_released_on_an_exception_and_a_created_folder_is_not_left_behind(tmp_path):
    target = tmp_path / "new" / "run"
    with pytest.raises(ZeroDivisionError):
        with folder_lock(target, "x"):
            1 / 0
    assert not (tmp_path / "new").exists()
    with folder_lock(tmp_path, "again"):
        pass


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                  "command": "robustrain train -c old.yaml", "started": "earlier"}))
    with pytest.warns(RuntimeWarning, match=f"stale lock.*pid {pid}.*old.yaml"):
        with folder_lock(tmp_path, "new") as lock:
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid() == lock.record["pid"]
    other_host = {"pid": 1, "host": "elsewhere.example", "command": "robustrain train", "started": "earlier"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other_host))  # its flock is gone: the record alone is stale
    with pytest.warns(RuntimeWarning, match="elsewhere.example"):
        with folder_lock(tmp_path, "new"):
            pass


def test_run_folder_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "run"
    f.write_text("not a folder")
    with pytest.raises(RobustrainError, match="is a file"):
        with folder_lock(f, "x"):
            pass
    assert f.read_text() == "not a folder"


@pytest.mark.slow
def test_two_trainings_into_one_folder_the_second_is_refused_and_the_first_is_intact(tmp_path, capsys):
    """A real training holds the folder; a second training and a --resume into it are refused with the holder's
    pid; the first then ends by SIGTERM (exit 143, lock released) with intact checkpoints and a log holding each
    step once."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "robustrain.cli", *tiny_args(run, "train.epochs=500")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.time() + 120
        while not (run / "last.pt").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        for argv in (tiny_args(run, "train.epochs=500"), [*tiny_args(run, "train.epochs=500"), "--resume"]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"pid {first.pid}" in err and "robustrain train" in err and "Traceback" not in err
        assert first.poll() is None, "the first run ended before the second was refused; make it longer"
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 143 and "SIGTERM" in err and "Traceback" not in err
    assert not (run / LOCK_NAME).exists()
    from robustrain.training import load_checkpoint

    step = load_checkpoint(run / "last.pt")["trainer"]["step"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert step > 0 and steps == sorted(set(steps))  # one writer: no step logged twice


@pytest.mark.slow
def test_sigterm_releases_the_lock_and_keeps_the_checkpoints(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robustrain.cli", *tiny_args(run, "train.epochs=50")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    deadline = time.time() + 60
    while not (run / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "SIGTERM" in err and "Traceback" not in err
    assert not (run / LOCK_NAME).exists()
    from robustrain.training import load_checkpoint

    assert load_checkpoint(run / "last.pt")["trainer"]["step"] > 0
