"""Shared fixtures: real small data (scikit-learn digits) and a small model trained on it once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# Training runs in tests are not tracked unless a test asks for it (wandb.mode: offline in tests/test_tracking.py);
# the default wandb.mode (auto) would otherwise open an offline wandb run for every run_training call.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")



def _shared_data() -> Path:
    """The project's shared data folder (MNIST files, get_cifar10.py): $ROBUSTRAIN_SHARED_DATA, else
    ../shared/data beside the checkout, else /work/shared/data. Tests that need it skip without it."""
    candidates = [os.environ.get("ROBUSTRAIN_SHARED_DATA"),
                  Path(__file__).resolve().parents[2] / "shared" / "data", "/work/shared/data"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED_DATA = _shared_data()

settings.register_profile(  # ci: the same examples on every run (a CI result is reproducible); dev: new ones each run
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def digits():
    from robustrain.data import load_dataset

    return load_dataset("digits", None, "train"), load_dataset("digits", None, "test")


def make_digits_model(batchnorm: bool = True, seed: int = 0) -> torch.nn.Module:
    from robustrain.data import load_dataset
    from robustrain.models import create_model

    ds = load_dataset("digits", None, "train")
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=10, in_channels=1, mean=ds.mean, std=ds.std, input_size=8,
                        batchnorm=batchnorm, width=8, hidden=32)


@pytest.fixture(scope="session")
def trained_digits_model(digits):
    """A small CNN trained with FGSM-RS on digits (eps 0.1) for a few seconds, in eval mode."""
    from robustrain.data import BatchLoader
    from robustrain.training import FGSMTrainer, LRSchedule
    from robustrain.threat import make_threat

    train, _ = digits
    model = make_digits_model()
    loader = BatchLoader(train, 64, shuffle=True, seed=0)
    epochs = 12
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    # constant momentum: the model the evaluation tests were written against (cyclic now cycles momentum by default)
    sched = LRSchedule("cyclic", 0.1, epochs * len(loader), len(loader), peak=0.4, cycle_momentum=False)
    FGSMTrainer(model, make_threat("linf", 0.1), opt, sched, loader, epochs=epochs, seed=0).fit()
    return model.eval()


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module (restored after it): attacks on tiny models are dominated by thread hand-offs,
    and per-example results must not depend on how a reduction is split across threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digits_batch(ds, n: int, offset: int = 0):
    x = ds.images[offset:offset + n].float() / 255
    return x, ds.labels[offset:offset + n]


def _kill_at():
    from robustrain.training import Callback

    class KillAt(Callback):
        """Simulates a kill right after step ``step`` (after any checkpoint written at that step)."""

        def __init__(self, step: int):
            self.at = step

        def on_batch_end(self, trainer, logs):
            if trainer.step == self.at:
                raise KeyboardInterrupt(f"killed at step {self.at}")

    return KillAt


KillAt = _kill_at()


def record_per_example(trainer) -> dict:
    """Wrap ``trainer.objective`` so that each step's per-example losses are kept in the returned dict
    (``["per_example"]``, detached): what a procedure's per-example weights multiply."""
    seen: dict = {}
    objective = trainer.objective

    def recorded(ctx):
        out = objective(ctx)
        seen["per_example"] = out["per_example"].detach()
        return out

    trainer.objective = recorded
    return seen
