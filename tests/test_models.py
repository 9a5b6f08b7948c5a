"""Tests of robustrain.models: shapes, gradients, the Normalise layer, channels_last, sizes and errors."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustrain.errors import ConfigError, UnknownNameError
from robustrain.models import Normalise, NormalisedModel, create_model, list_models, register_model

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

# (model name, factory kwargs, in_channels, image size): tiny versions of every registered family.
CASES: list[tuple[str, dict[str, Any], int, int]] = [
    ("preact_resnet18", {"width": 8}, 3, 32),
    ("preact_resnet18", {"width": 8}, 1, 28),
    ("preact_resnet18", {"width": 8}, 1, 8),
    ("wide_resnet", {"depth": 10, "widen": 1}, 3, 32),
    ("wide_resnet", {"depth": 10, "widen": 1}, 1, 28),
    ("wide_resnet", {"depth": 10, "widen": 1}, 1, 8),
    ("small_cnn", {"input_size": 32}, 3, 32),
    ("small_cnn", {"input_size": 28}, 1, 28),
    ("small_cnn", {"input_size": 8, "width": 8}, 1, 8),
    ("small_cnn", {"input_size": 8, "batchnorm": True}, 1, 8),
    ("timm:test_resnet", {}, 3, 32),
    ("timm:test_resnet", {}, 1, 8),
]
CASE_IDS = [f"{name}-{in_ch}x{size}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" for name, kw, in_ch, size in CASES]


def _stats(in_channels: int) -> dict[str, tuple[float, ...]]:
    return {"mean": CIFAR_MEAN, "std": CIFAR_STD} if in_channels == 3 else {"mean": MNIST_MEAN, "std": MNIST_STD}


def _build(name: str, kwargs: dict[str, Any], in_channels: int, seed: int = 0, **extra: Any) -> NormalisedModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_model(name, num_classes=7, in_channels=in_channels, **_stats(in_channels), **kwargs, **extra)


def _images(in_channels: int, size: int, batch: int = 4, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, in_channels, size, size, generator=gen)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models() -> None:
    assert list_models() == ["preact_resnet18", "small_cnn", "wide_resnet", "wrn28_10", "wrn34_10"]


@pytest.mark.parametrize(("name", "kwargs", "in_channels", "size"), CASES, ids=CASE_IDS)
def test_output_shape_and_finite(name: str, kwargs: dict[str, Any], in_channels: int, size: int) -> None:
    model = _build(name, kwargs, in_channels)
    x = _images(in_channels, size)
    for mode in (True, False):
        model.train(mode)
        out = model(x)
        assert out.shape == (4, 7)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "kwargs", "in_channels", "size"), CASES, ids=CASE_IDS)
def test_backward_reaches_every_parameter(name: str, kwargs: dict[str, Any], in_channels: int, size: int) -> None:
    model = _build(name, kwargs, in_channels).train()
    x = _images(in_channels, size)
    y = torch.arange(4) % 7
    F.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    assert params, "the model has no parameters"
    missing = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None)
    if not name.startswith("timm:"):  # timm ResNets zero-init the last BN of each branch: zero grads at init
        zero = [n for n, p in params.items() if p.grad is not None and not p.grad.any()]
        assert not zero, f"all-zero gradient for {zero}"
    assert not any(b.requires_grad for b in model.normalise.buffers())


@pytest.mark.parametrize(("name", "kwargs", "in_channels", "size"), CASES, ids=CASE_IDS)
def test_first_module_is_normalise_and_normalises(
        name: str, kwargs: dict[str, Any], in_channels: int, size: int) -> None:
    model = _build(name, kwargs, in_channels).eval()
    assert isinstance(model, NormalisedModel)
    assert isinstance(model[0], Normalise) and model[0] is model.normalise
    assert next(iter(model.children())) is model.normalise
    assert model[1] is model.net and not isinstance(model.net, Normalise)

    x = _images(in_channels, size)
    stats = _stats(in_channels)
    mean = torch.tensor(stats["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(stats["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = model.net((x - mean) / std)
        torch.testing.assert_close(model(x), expected)
        # The layer really normalises: skipping it changes the logits.
        assert not torch.allclose(model.net(x), expected, atol=1e-4)


@pytest.mark.parametrize(("name", "kwargs", "in_channels", "size"), CASES, ids=CASE_IDS)
def test_channels_last_matches_contiguous(name: str, kwargs: dict[str, Any], in_channels: int, size: int) -> None:
    model = _build(name, kwargs, in_channels).eval()
    model_cl = _build(name, kwargs, in_channels, seed=123, channels_last=True).eval()
    model_cl.load_state_dict(model.state_dict())
    convs = [m for m in model_cl.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)

    x = _images(in_channels, size)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(model_cl(x.contiguous(memory_format=torch.channels_last)), expected,
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model_cl(x), expected, rtol=1e-4, atol=1e-5)


def test_normalise_layer() -> None:
    norm = Normalise(CIFAR_MEAN, CIFAR_STD)
    x = _images(3, 5)
    torch.testing.assert_close(norm(x), (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
                               / torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
    # Buffers: saved in the state dict, moved and cast by .to().
    assert set(norm.state_dict()) == {"mean", "std"}
    assert not list(norm.parameters())
    assert norm.to(torch.float64).mean.dtype == torch.float64
    assert norm(x.double()).dtype == torch.float64
    # channels_last inputs keep their memory format.
    out = norm(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    # A single value is shared by every channel.
    torch.testing.assert_close(Normalise(0.5, 0.25, channels=3)(x), (x - 0.5) / 0.25)


def test_normalise_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="2 values"):
        Normalise((0.1, 0.2), (1.0, 1.0), channels=3)
    with pytest.raises(ConfigError, match="positive"):
        Normalise((0.5,), (0.0,))
    with pytest.raises(ConfigError, match="finite"):
        Normalise((float("nan"),), (1.0,))
    with pytest.raises(ConfigError, match="3 input channels"):
        create_model("small_cnn", num_classes=10, in_channels=3, mean=MNIST_MEAN + (0.0,), std=1.0)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*in_channels=1"):
        Normalise(CIFAR_MEAN, CIFAR_STD)(torch.rand(2, 1, 8, 8))


def test_default_normalisation_is_identity() -> None:
    model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    x = _images(1, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(x))


def test_model_moves_with_to_including_normalise() -> None:
    model = create_model("small_cnn", num_classes=10, in_channels=1, input_size=8, mean=MNIST_MEAN, std=MNIST_STD)
    model = model.to(torch.float64)
    assert model.normalise.mean.dtype == torch.float64
    assert model(_images(1, 8).double()).dtype == torch.float64
    assert {"normalise.mean", "normalise.std"} <= set(model.state_dict())


def test_parameter_counts_match_published() -> None:
    # Construction only, on the meta device (no memory, no init cost).
    with torch.device("meta"):
        preact = create_model("preact_resnet18", num_classes=10)
        wrn34 = create_model("wrn34_10", num_classes=10)
        wrn28 = create_model("wrn28_10", num_classes=10)
        wrn34_generic = create_model("wide_resnet", num_classes=10, depth=34, widen=10)
        small = create_model("small_cnn", num_classes=10, in_channels=1)
    # PreActResNet-18 of locuslab fast_adversarial / robust_overfitting (final BN + ReLU). The often
    # quoted 11,171,146 is kuangliu/pytorch-cifar's PreActResNet18, which has no final BN (2 x 512 params).
    assert _n_params(preact) == 11_172_170
    assert _n_params(preact) - _n_params(preact.net.bn) == 11_171_146
    assert _n_params(wrn34) == 46_160_474
    assert _n_params(wrn34_generic) == 46_160_474
    assert _n_params(wrn28) == 36_479_194
    # Wong et al.'s MNIST net: 272 + 8,224 + 156,900 + 1,010.
    assert _n_params(small) == 166_406


def test_width_scales_preact_resnet() -> None:
    with torch.device("meta"):
        narrow = create_model("preact_resnet18", num_classes=10, width=16)
    assert narrow.net.conv1.out_channels == 16
    assert narrow.net.linear.in_features == 128
    assert _n_params(narrow) < 11_172_170 / 10


def test_state_dict_keys_match_reference_code() -> None:
    with torch.device("meta"):
        preact = create_model("preact_resnet18", num_classes=10, width=8).net
        wrn = create_model("wide_resnet", num_classes=10, depth=16, widen=2).net
    preact_keys = set(preact.state_dict())
    assert {"conv1.weight", "layer2.0.shortcut.0.weight", "layer4.1.bn2.running_mean", "bn.weight",
            "linear.bias"} <= preact_keys
    assert "layer1.0.shortcut.0.weight" not in preact_keys
    wrn_keys = set(wrn.state_dict())
    assert {"conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.1.conv2.weight",
            "bn1.running_var", "fc.weight"} <= wrn_keys
    assert not any(k.startswith("sub_block1") for k in wrn_keys)


def test_projection_shortcuts_take_the_preactivated_input() -> None:
    """As in the reference code: the 1x1 shortcut sees relu(bn1(x)), the identity shortcut sees x."""
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen[key + ".in"], seen[key + ".out"] = inputs[0].detach().clone(), output.detach().clone()
        return hook

    preact = create_model("preact_resnet18", num_classes=10, width=8).net.eval()
    block = preact.layer2[0]
    block.bn1.register_forward_hook(keep("bn1"))
    block.shortcut.register_forward_hook(keep("shortcut"))
    wrn = create_model("wide_resnet", num_classes=10, depth=10, widen=1).net.eval()
    wblock = wrn.block2.layer[0]
    wblock.bn1.register_forward_hook(keep("wbn1"))
    wblock.convShortcut.register_forward_hook(keep("wshortcut"))
    with torch.no_grad():
        preact(_images(3, 16))
        wrn(_images(3, 16))
    torch.testing.assert_close(seen["shortcut.in"], F.relu(seen["bn1.out"]))
    torch.testing.assert_close(seen["wshortcut.in"], F.relu(seen["wbn1.out"]))


def test_wide_resnet_dropout_is_off_by_default() -> None:
    model = create_model("wide_resnet", num_classes=10, depth=10, widen=1).train()
    x = _images(3, 8)
    torch.testing.assert_close(model(x), model(x))
    dropped = create_model("wide_resnet", num_classes=10, depth=10, widen=1, dropout=0.5).train()
    assert not torch.allclose(dropped(x), dropped(x))


def test_small_cnn_batchnorm_option() -> None:
    plain = create_model("small_cnn", num_classes=10, in_channels=1)
    with_bn = create_model("small_cnn", num_classes=10, in_channels=1, batchnorm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 2
    # Construction leaves the BatchNorm statistics untouched.
    assert all(m.num_batches_tracked == 0 for m in with_bn.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("size", [4, 5, 7, 8, 9, 28, 32])
def test_small_cnn_flatten_size(size: int) -> None:
    model = create_model("small_cnn", num_classes=3, in_channels=1, input_size=size)
    assert model(_images(1, size, batch=2)).shape == (2, 3)
    with pytest.raises(ConfigError, match="at least 4"):
        create_model("small_cnn", num_classes=3, in_channels=1, input_size=3)


def test_small_cnn_rejects_other_input_size() -> None:
    model = create_model("small_cnn", num_classes=10, in_channels=1, input_size=28)
    with pytest.raises(ValueError, match="input_size=8"):
        model(_images(1, 8))


def test_none_kwargs_mean_model_default() -> None:
    with torch.device("meta"):
        model = create_model("preact_resnet18", num_classes=10, width=None)
    assert model.net.conv1.out_channels == 64


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_model("preact_resnet_18", num_classes=10)
    msg = str(info.value)
    for name in list_models():
        assert name in msg
    assert "timm:<timm name>" in msg
    assert "Did you mean 'preact_resnet18'?" in msg
    assert isinstance(info.value, KeyError)


def test_unknown_kwarg_lists_accepted_arguments() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'widht' for model 'preact_resnet18'; did you mean 'width'\? "
                                          r"Valid keys: width\."):
        create_model("preact_resnet18", num_classes=10, widht=16)
    with pytest.raises(ConfigError, match="depth, widen, dropout"):
        create_model("wide_resnet", num_classes=10, widen=2, drop_rate=0.1)
    with pytest.raises(ConfigError, match="depth"):
        create_model("wide_resnet", num_classes=10, widen=2)  # depth is required


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"depth": 12, "widen": 1}, "6n \\+ 4"),
    ({"depth": 10, "widen": 0}, "widen"),
    ({"depth": 10, "widen": 1, "dropout": 1.0}, "drop_rate"),
])
def test_wide_resnet_rejects_bad_config(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model("wide_resnet", num_classes=10, **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_classes": 0}, "num_classes"),
    ({"num_classes": 10, "in_channels": True}, "in_channels"),
    ({"num_classes": 10, "width": 0}, "width"),
])
def test_bad_sizes_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model("preact_resnet18", **kwargs)


def test_unknown_timm_name_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match=r"timm:resnet19.*timm:resnet18"):
        create_model("timm:resnet19", num_classes=10)
    with pytest.raises(UnknownNameError, match="robustrain's own model is called 'small_cnn'"):
        create_model("timm:small_cnn", num_classes=10)


def test_timm_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="pretrained=False"):
        create_model("timm:test_resnet", num_classes=10, pretrained=True)
    with pytest.raises(ConfigError, match="foo"):
        create_model("timm:test_resnet", num_classes=10, foo=1)


def test_timm_kwargs_are_passed_through() -> None:
    model = create_model("timm:test_resnet", num_classes=10, drop_rate=0.25)
    assert model.net.drop_rate == 0.25


def test_register_model_rejects_duplicates_and_bad_signatures() -> None:
    def small_cnn(*, num_classes: int, in_channels: int) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="registered twice"):
        register_model(small_cnn)

    def no_channels(*, num_classes: int) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="in_channels"):
        register_model(no_channels)
    assert "no_channels" not in list_models()


# -- normalise: false (Wong MNIST, TRADES, MART, ELLE, ConvergeSmooth feed raw [0,1] inputs) ---------------------
def test_normalise_false_builds_the_model_without_the_mean_std_layer() -> None:
    torch.manual_seed(0)
    plain = create_model("small_cnn", num_classes=10, in_channels=1, mean=0.1307, std=0.3081, normalise=False)
    torch.manual_seed(0)
    normed = create_model("small_cnn", num_classes=10, in_channels=1, mean=0.1307, std=0.3081)
    assert isinstance(plain, NormalisedModel) and isinstance(plain.normalise, nn.Identity)
    assert not any(k.startswith("normalise.") for k in plain.state_dict())  # no mean/std buffers
    assert [k for k in normed.state_dict() if not k.startswith("normalise.")] == list(plain.state_dict())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(plain(x), plain.net(x))  # the network sees the raw [0,1] input
        assert not torch.allclose(plain(x), normed(x))
    with pytest.raises(ConfigError, match="normalise"):
        create_model("small_cnn", num_classes=10, in_channels=1, normalise="no")


def test_model_normalise_config_key_reaches_the_built_model(tmp_path) -> None:
    from pathlib import Path

    from robustrain.config import load_config
    from robustrain.build import build_trainer

    quick = Path(__file__).resolve().parent.parent / "configs" / "quickstart_digits.yaml"
    cfg = load_config(quick, ["model.normalise=false", "train.progress=false", "wandb.mode=disabled",
                              f"out_dir={tmp_path}"])
    assert cfg.model.normalise is False
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.model.normalise, nn.Identity)
    trainer2, _ = build_trainer(load_config(quick, [f"out_dir={tmp_path}", "wandb.mode=disabled"]), tmp_path / "run2")
    assert isinstance(trainer2.model.normalise, Normalise)
