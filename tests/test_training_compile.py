"""The compiled training step (``train.compile``): the same parameters as the eager step, a clean eager fallback with
one warning, and the default (on CUDA only)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from robustrain.build import build_trainer, resolve_compile
from robustrain.config import load_config
from robustrain.training.compiled import CompiledModule, CompiledObjective

QUICK = Path(__file__).resolve().parent.parent / "configs" / "quickstart_digits.yaml"
SETS = ["train.progress=false", "wandb.mode=disabled", "data.train_subset=192", "data.batch_size=64",
        "train.epochs=1"]  # 3 steps: the cyclic learning rate rises, peaks and falls within them


def _trainer(tmp_path: Path, name: str, compile: bool, extra=()):
    cfg = load_config(QUICK, [*SETS, f"train.compile={'true' if compile else 'false'}", f"out_dir={tmp_path}", *extra])
    trainer, data = build_trainer(cfg, tmp_path / name)
    return trainer, list(data.train.iterate(0))


def _steps(trainer, batches) -> list[float]:
    """``train_step`` on each batch, advancing the step count as the loop does (the learning rate follows it)."""
    losses = []
    for x, y in batches:
        losses.append(trainer.train_step(x, y)["loss"])
        trainer.step += 1
    return losses


def test_default_compiles_on_cuda_only():
    cpu = torch.nn.Linear(2, 2)
    assert resolve_compile(None, cpu) is False
    assert resolve_compile(True, cpu) is True and resolve_compile(False, cpu) is False
    assert load_config(QUICK, []).train.compile is None


def test_a_failing_compile_falls_back_to_the_eager_step_with_one_warning(tmp_path):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    eager, batches = _trainer(tmp_path, "eager", False)
    fallback, _ = _trainer(tmp_path, "fallback", False)
    fallback._compiled_objective = CompiledObjective(fallback.objective, fallback.model, backend=broken_backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = _steps(fallback, batches)
    compile_warnings = [w for w in caught if "train.compile" in str(w.message)]
    assert len(compile_warnings) == 1 and "eagerly" in str(compile_warnings[0].message)
    assert fallback._step_objective().failed
    assert losses == _steps(eager, batches)  # the eager objective, bit for bit
    for a, b in zip(eager.model.parameters(), fallback.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["train.label_smoothing=0.1", "train.amp=bf16"], ["model.channels_last=true"]],
                         ids=["fp32", "bf16_label_smoothing", "channels_last"])
def test_compiled_step_gives_the_parameters_of_the_eager_step(tmp_path, extra):
    """Three FGSM-RS steps (the same noise: the same seed), inductor on the CPU: every parameter within float
    rounding of the eager run's, and the compiled path really ran (no fallback)."""
    eager, batches = _trainer(tmp_path, "eager", False, extra)
    comp, _ = _trainer(tmp_path, "compiled", True, extra)
    assert isinstance(comp.train_model, CompiledModule) and isinstance(comp._step_objective(), CompiledObjective)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
        compiled_losses = _steps(comp, batches)
    assert not comp._step_objective().failed and not comp.train_model.failed
    eager_losses = _steps(eager, batches)
    tol = 2e-2 if "train.amp=bf16" in extra else 1e-4  # bf16 autocast: inductor and eager round the matmuls differently
    assert compiled_losses == pytest.approx(eager_losses, rel=tol, abs=tol)
    for (name, a), b in zip(eager.model.named_parameters(), comp.model.parameters()):
        torch.testing.assert_close(b, a, atol=tol, rtol=tol, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(eager.model.parameters(), _trainer(tmp_path, "fresh", False,
                                                                                        extra)[0].model.parameters()))
