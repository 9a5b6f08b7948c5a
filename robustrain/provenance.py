"""Where a result came from: the git commit of the code, the software versions and the machine.

One copy of each provenance helper, for the run folder (``environment.json``, ``summary.json``), the evaluation
report and the benchmark scripts.

* :func:`git_commit`: the commit of the repository robustrain runs from (``-dirty`` with uncommitted changes).
* :func:`package_version`: an installed distribution's version, or None.
* :func:`environment`: what a training run records about its software and machine.
* :func:`package_versions`: what an evaluation report records about its software.
"""
from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent  # the checkout robustrain runs from (when it is one)


def git_commit(*, short: bool = False, dirty_suffix: str = "-dirty", cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout (``short``: the abbreviated hash) plus ``dirty_suffix`` when tracked
    files have uncommitted changes; None outside a git checkout or without git."""
    root = REPO if cwd is None else Path(cwd)
    try:
        out = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + (dirty_suffix if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The software and machine of a training run (its ``environment.json`` and the wandb run's config)."""
    import numpy
    import torchvision

    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": numpy.__version__,
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(), "git_commit": git_commit(), "argv": sys.argv,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def package_versions() -> dict[str, Any]:
    """The software of an evaluation report (its ``environment``; the device is filled in by the caller)."""
    return {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "torchattacks": package_version("torchattacks"), "autoattack": package_version("autoattack"),
            "numpy": package_version("numpy"), "robustrain": package_version("robustrain"), "git_commit": git_commit(),
            "cuda": torch.version.cuda, "device": None}


__all__ = ["REPO", "environment", "git_commit", "package_version", "package_versions"]
