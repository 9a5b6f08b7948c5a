"""Training on a channels_last model (``model.channels_last: true``, the faster layout for the convolutions of the
CPU training step, results/benchmarks/train_step.md): the same steps as on the contiguous model up to float
rounding, and the layout survives the optimiser steps and the checkpoint."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustrain.models import create_model
from robustrain.threat import make_threat
from robustrain.training import FGSMTrainer, LRSchedule, PGDTrainer


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def iterate(self, epoch: int, start_batch: int = 0):
        return iter(self.batches[start_batch:])


def _trainer(kind: str, model: nn.Module, batches) -> FGSMTrainer | PGDTrainer:
    threat = make_threat("linf", 8 / 255)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = LRSchedule("constant", 0.05, total_steps=100, steps_per_epoch=len(batches))
    if kind == "fgsm_rs":
        return FGSMTrainer(model, threat, opt, schedule, _Batches(batches), epochs=1, seed=3,
                           attack_kwargs={"update_bn_stats": True})
    return PGDTrainer(model, threat, opt, schedule, _Batches(batches), epochs=1, seed=3, steps=3)


@pytest.mark.parametrize("kind", ["fgsm_rs", "pgd"])
def test_channels_last_steps_match_the_contiguous_model(kind):
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(3)]
    torch.manual_seed(0)
    model = create_model("preact_resnet18", num_classes=10, width=4, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    initial = copy.deepcopy(model)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    plain, cl = _trainer(kind, model, batches), _trainer(kind, model_cl, batches)
    losses, losses_cl = [], []
    for x, y in batches:
        losses.append(plain.train_step(x, y)["loss"])
        losses_cl.append(cl.train_step(x, y)["loss"])
        plain.step += 1
        cl.step += 1
    assert losses_cl == pytest.approx(losses, rel=1e-4, abs=1e-5)
    state, state_cl = model.state_dict(), model_cl.state_dict()
    for name, value in state.items():
        if value.is_floating_point():
            torch.testing.assert_close(state_cl[name], value, rtol=1e-3, atol=1e-5, msg=name)
        else:
            assert torch.equal(state_cl[name], value), name  # num_batches_tracked
    assert any(not torch.equal(a, b) for a, b in zip(initial.parameters(), model.parameters()))  # it trained
    # the layout survives the optimiser steps (gradients and momentum follow the weights' strides) ...
    convs = [m for m in model_cl.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    # ... and the weights load into a contiguous model as they are
    fresh = create_model("preact_resnet18", num_classes=10, width=4)
    fresh.load_state_dict(state_cl)
    for a, b in zip(fresh.state_dict().values(), state_cl.values()):
        assert torch.equal(a, b)
