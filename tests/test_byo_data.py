"""Bring-your-own data: image folders (PNG), .npz files, torchvision classes by name, a user's DataLoader,
registered readers, the streaming path, Tiny-ImageNet / ImageNet layouts, and the errors for bad data.

The data are made in each test: small images whose class is visible (one channel brighter, or a bright row), so a
few training steps learn them and the end-to-end tests can check that training did something.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from robustrain.config import load_config
from robustrain.data import (DATASETS, BatchLoader, StreamLoader, as_loader, load_dataset, make_loader, read_splits,
                             register_dataset, split_validation)
from robustrain.data.dataset import ArrayDataset, channel_stats
from robustrain.errors import ConfigError, DataNotFoundError, UnknownNameError

RUN = ["train.epochs=3", "train.progress=false", "wandb.mode=disabled", "data.batch_size=16", "data.val_size=16",
       "data.workers=0", "eval.attack={name: pgd, steps: 3, restarts: 1}", "threat.eps=0.05", "optim.lr=0.05",
       "model.kwargs={input_size: 8}", "train.log_every=100"]


def _images(n: int, classes: int, rng: np.random.Generator, size: int = 8, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x H x W x C images whose label is the index of their bright row (modulo the height)."""
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 90, (n, size, size, channels)).astype(np.uint8)
    x[np.arange(n), y % size] += 160
    return x, y


def _png_folder(root: Path, classes=("ant", "bee", "cat"), n=(30, 12), size=8, seed=0, test="test") -> Path:
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", test), n):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            x = rng.integers(0, 90, (count, size, size, 3)).astype(np.uint8)
            x[:, k % size] += 160  # the class's bright row
            for i in range(count):
                Image.fromarray(x[i]).save(root / split / c / f"{i:03d}.png")
    return root


def _train(tmp_path: Path, *overrides: str) -> dict:
    from robustrain.run import run_training

    cfg = load_config(None, [*RUN, f"out_dir={tmp_path / 'runs'}", *overrides])
    return run_training(cfg, tmp_path / "runs" / cfg.name)


def _check_trained(summary: dict, n_test: int, classes: int) -> None:
    last = next(r for r in summary["test"] if r["checkpoint"] == "last")
    assert last["n_ex"] == n_test
    assert last["clean_acc"] > 1 / classes + 0.15, summary["table"]  # well above chance: training learnt the rows


# ------------------------------------------------------------------------------------------- folder


def test_folder_of_pngs_trains_and_evaluates(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "pngs")
    summary = _train(tmp_path, "data.name=folder", f"data.root={root}", "name=pngs")
    _check_trained(summary, 36, 3)
    ds = load_dataset("folder", root, "train")
    png = np.array(Image.open(root / "train" / "bee" / "004.png"))
    assert torch.equal(ds.images[30 + 4], torch.from_numpy(png).permute(2, 0, 1))  # sorted classes, sorted files
    assert ds.labels.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    assert (ds.mean, ds.std) == channel_stats(ds.images)


def test_folder_val_split_and_resize(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "f", n=(4, 2), size=12, test="val")
    test = load_dataset("folder", root, "test", options={"image_size": 6})
    assert test.image_shape == (3, 6, 6) and len(test) == 6
    grey = load_dataset("folder", root, "test", options={"channels": 1})
    assert grey.image_shape == (1, 12, 12)
    big = load_dataset("folder", root, "test", options={"image_size": 10, "resize": 14})
    assert big.image_shape == (3, 10, 10)


def test_folder_errors(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "f", n=(3, 2))
    with pytest.raises(DataNotFoundError, match=r"no train/ folder .*class folders: put them under train/"):
        load_dataset("folder", root / "train", "train")  # pointed one level too deep
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        load_dataset("folder", tmp_path / "nowhere", "train")
    (root / "test" / "dog").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test" / "dog" / "0.png")
    with pytest.raises(ConfigError, match=r"differ from those of train/.*only in test: \['dog'\]"):
        load_dataset("folder", root, "test")
    (root / "train" / "dog").mkdir()
    with pytest.raises(ConfigError, match="holds no image files"):
        load_dataset("folder", root, "train")
    Image.fromarray(np.zeros((5, 8, 3), np.uint8)).save(root / "train" / "dog" / "0.png")
    with pytest.raises(ConfigError, match=r"different sizes.*data.options.image_size"):
        load_dataset("folder", root, "train")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "loose.png")
    with pytest.raises(ConfigError, match="directly in"):
        load_dataset("folder", root, "train")
    with pytest.raises(ConfigError, match=r"'data.options.image_sise' for dataset 'folder'; did you mean 'data.options.image_size'"):
        load_dataset("folder", root, "train", options={"image_sise": 8})


def test_broken_image_file_is_named(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "f", n=(2, 1))
    (root / "train" / "ant" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"bad.png: not a readable image"):
        load_dataset("folder", root, "train")


# ---------------------------------------------------------------------------------------------- npz


def _npz(root: Path, seed: int = 0, grey: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 96), ("test", 40)):
        x, y = _images(n, 4, rng, channels=1)
        np.savez(root / f"{split}.npz", x=x[..., 0] if grey else x, y=y)
    return root


def test_npz_trains_and_evaluates(tmp_path: Path) -> None:
    root = _npz(tmp_path / "npz")
    summary = _train(tmp_path, "data.name=npz", f"data.root={root}", "name=npz")
    _check_trained(summary, 40, 4)
    ds = load_dataset("npz", root, "test")
    with np.load(root / "test.npz") as f:
        assert torch.equal(ds.images[:, 0], torch.from_numpy(f["x"])) and ds.labels.tolist() == f["y"].tolist()
    assert ds.num_classes == 4


@pytest.mark.filterwarnings("ignore:.*near chance")
def test_eval_model_passes_data_options_to_the_reader(tmp_path: Path, monkeypatch, capsys) -> None:
    """``robustrain eval --model ... --data-option KEY=VALUE``: the dataset reader gets its options (data.options). A
    test split whose labels stop at 4 has 5 classes unless ``num_classes`` says 10, so a 10-class model is refused
    without the option and evaluated with it; the report records the options."""
    import json

    from robustrain.cli import main

    root = tmp_path / "npz"
    root.mkdir()
    x, y = _images(12, 5, np.random.default_rng(0))
    np.savez(root / "test.npz", x=x, y=y)
    (tmp_path / "ten.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), "
                                     "nn.Linear(3 * 8 * 8, 10))\n")
    monkeypatch.chdir(tmp_path)
    common = ["eval", "--model", "ten:build", "--dataset", "npz", "--data-root", str(root), "--eps", "0.05",
              "--attack", "pgd", "--steps", "1", "--restarts", "1", "--no-progress", "--out", "out"]
    assert main(common) == 2
    assert "expected (batch, 5) logits" in capsys.readouterr().err
    assert main([*common, "--data-option", "num_classes=10"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n_ex"] == 12 and report["data"]["options"] == {"num_classes": 10}


def test_npz_channels_last_and_errors(tmp_path: Path) -> None:
    root = _npz(tmp_path / "a", grey=False)
    assert load_dataset("npz", root, "train").image_shape == (1, 8, 8)  # N x H x W x 1
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "train.npz", x=np.random.rand(4, 8, 8).astype(np.float32), y=np.zeros(4, int))
    with pytest.raises(ConfigError, match=r"x is float32; images must be uint8.*\(x \* 255\)"):
        load_dataset("npz", bad, "train")
    np.savez(bad / "train.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 2, 7]))
    with pytest.raises(ConfigError, match=r"label 7 is outside \[0, 3\)"):
        load_dataset("npz", bad, "train", options={"num_classes": 3})
    np.savez(bad / "train.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, int))
    with pytest.raises(ConfigError, match="holds no images"):
        load_dataset("npz", bad, "train")
    np.savez(bad / "train.npz", x=np.zeros((4, 8, 8, 5), np.uint8), y=np.zeros(4, int))
    with pytest.raises(ConfigError, match=r"shape \(4, 8, 8, 5\); expected N x H x W"):
        load_dataset("npz", bad, "train")
    np.savez(bad / "train.npz", images=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ConfigError, match=r"holds the arrays \['images'\]; expected x and y"):
        load_dataset("npz", bad, "train")
    with pytest.raises(DataNotFoundError, match="test.npz' does not exist"):
        load_dataset("npz", bad, "test")


# -------------------------------------------------------------------------------------- torchvision


FAKE = "data.options={size: 120, image_size: [3, 8, 8], num_classes: 3, test: {random_offset: 1000, size: 30}}"


def test_torchvision_class_by_name_trains_and_evaluates(tmp_path: Path) -> None:
    summary = _train(tmp_path, "data.name=torchvision:FakeData", FAKE, "name=fake", "train.epochs=1")
    last = next(r for r in summary["test"] if r["checkpoint"] == "last")
    assert last["n_ex"] == 30  # FakeData is noise: nothing to learn, but the whole path runs
    import torchvision

    fake = torchvision.datasets.FakeData(size=30, image_size=(3, 8, 8), num_classes=3, random_offset=1000)
    ds = load_dataset("torchvision:FakeData", None, "test",
                      options={"size": 30, "image_size": [3, 8, 8], "num_classes": 3, "random_offset": 1000})
    img, label = fake[7]
    assert torch.equal(ds.images[7], torch.from_numpy(np.array(img)).permute(2, 0, 1)) and ds.labels[7] == label


def test_torchvision_mnist_layout(tmp_path: Path) -> None:
    """torchvision:MNIST reads torchvision's own layout (ROOT/MNIST/raw, uncompressed idx files)."""
    import struct

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4B3I", 0, 0, 8, 3, n, 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">4BI", 0, 0, 8, 1, n) + y.tobytes())
    ds = load_dataset("torchvision:MNIST", tmp_path, "test")
    assert ds.image_shape == (1, 28, 28) and len(ds) == 10 and ds.num_classes == 10
    assert torch.equal(ds.images[:, 0], torch.from_numpy(x)) and ds.labels.tolist() == y.tolist()
    ours = load_dataset("mnist", tmp_path, "test")  # robustrain's own reader agrees with torchvision's
    assert torch.equal(ours.images, ds.images)


def test_torchvision_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown torchvision.datasets class 'FakeDta'.*Did you mean 'FakeData'"):
        load_dataset("torchvision:FakeDta", None, "train")
    with pytest.raises(DataNotFoundError, match="data.download: true"):
        load_dataset("torchvision:CIFAR10", tmp_path, "train")
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['sise'\]"):
        load_dataset("torchvision:FakeData", None, "train", options={"sise": 3})
    with pytest.raises(ConfigError, match="data.root is not set"):
        load_dataset("torchvision:MNIST", None, "train")


# ------------------------------------------------------------------------------ a user's DataLoader


def test_trainer_takes_a_dataloader_and_evaluates(tmp_path: Path) -> None:
    from robustrain.attacks import build_attack
    from robustrain.evaluation import evaluate
    from robustrain.models import create_model
    from robustrain.threat import make_threat
    from robustrain.training import LRSchedule, Trainer

    rng = np.random.default_rng(0)
    x, y = _images(160, 4, rng, channels=1)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # uint8: converted to [0, 1] by the Trainer
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images[:128], torch.from_numpy(y[:128])),
                                        batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images[128:].float() / 255,
                                                                      torch.from_numpy(y[128:])), batch_size=16)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=4, in_channels=1, mean=(0.5,), std=(0.3,), input_size=8)
    threat = make_threat("linf", 0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(model, build_attack("fgsm_rs", threat), opt, LRSchedule("constant", 0.05, 8 * 3, 8), train,
                      epochs=3, val_loader=test, val_attack=build_attack("pgd", threat, steps=3))
    history = trainer.fit()
    assert len(history) == 3 and history[-1]["val_clean_acc"] > 0.45  # chance is 0.25
    res = evaluate(model, as_loader(test).iterate(0), {"pgd": build_attack("pgd", threat, steps=3)})
    assert res.n == 32 and res.accuracy()["clean"] == pytest.approx(history[-1]["val_clean_acc"])


def test_iterable_errors() -> None:
    x = torch.rand(4, 1, 8, 8)
    normalised = [((x - 0.5) / 0.2, torch.zeros(4, dtype=torch.int64))]
    with pytest.raises(ConfigError, match="Remove transforms.Normalize"):
        next(as_loader(normalised).iterate(0))
    with pytest.raises(ConfigError, match="one-shot iterator"):
        as_loader(iter(normalised))
    with pytest.raises(ConfigError, match="integer class labels"):
        next(as_loader([(x, torch.zeros(4))]).iterate(0))
    with pytest.raises(ConfigError, match="B x C x H x W"):
        next(as_loader([(x[:, 0], torch.zeros(4, dtype=torch.int64))]).iterate(0))
    with pytest.raises(ConfigError, match="no len"):
        len(as_loader(type("Gen", (), {"__iter__": lambda self: iter(normalised)})()))
    with pytest.raises(ConfigError, match="per-example state"):
        next(as_loader(normalised).iterate(0, with_indices=True))
    x8, y8 = next(as_loader([{"image": (x * 255).to(torch.uint8), "label": torch.ones(4, dtype=torch.int32)}]).iterate(0))
    assert x8.dtype == torch.float32 and float(x8.max()) <= 1 and y8.dtype == torch.int64
    with pytest.warns(UserWarning, match="skipped"):
        assert len(list(as_loader([(x, torch.zeros(4, dtype=torch.int64))] * 3).iterate(0, start_batch=2))) == 1


# ------------------------------------------------------------------------------ register_dataset


def test_register_dataset_trains_by_name(tmp_path: Path) -> None:
    seen = {}

    @register_dataset("byo_rows")
    def read_rows(root, train, *, n=64):
        seen[train] = n
        rng = np.random.default_rng(0 if train else 1)
        x, y = _images(n if train else 24, 3, rng, channels=1)
        images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        mean, std = channel_stats(images)
        return ArrayDataset(images, torch.from_numpy(y), num_classes=3, mean=mean, std=std, name="byo_rows")

    try:
        with pytest.raises(ValueError, match="registered twice"):
            register_dataset("byo_rows")(read_rows)
        with pytest.raises(ValueError, match="not a valid dataset name"):
            register_dataset("torchvision:Mine")
        summary = _train(tmp_path, "data.name=byo_rows", "data.root=.", "data.options={n: 96}", "name=rows")
        _check_trained(summary, 24, 3)
        assert seen == {True: 96, False: 96}
        with pytest.raises(ConfigError, match=r"unknown key 'data.options.m' for dataset 'byo_rows'.*Valid keys.*: n\."):
            load_dataset("byo_rows", ".", "train", options={"m": 1})
    finally:
        DATASETS._entries.pop("byo_rows", None)  # the registry is the process's: leave it as it was
    with pytest.raises(UnknownNameError, match=r"torchvision:<Class>"):
        load_dataset("byo_rows", ".", "train")


def test_reader_by_module_and_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``data.name: module:function`` reads with a function of one's own, imported from the current folder."""
    (tmp_path / "my_readers.py").write_text(
        "import torch\n"
        "from robustrain.data import ArrayDataset\n"
        "def read(root, train, *, n=6):\n"
        "    x = torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2)\n"
        "    return ArrayDataset(x, torch.arange(n) % 2, num_classes=2, mean=(0.5,), std=(0.5,), name='mine')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_dataset("my_readers:read", ".", "test", options={"n": 4})
    assert len(ds) == 4 and ds.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(ConfigError, match="has no attribute 'reed'"):
        load_dataset("my_readers:reed", ".", "test")
    with pytest.raises(ConfigError, match="cannot import 'not_a_module_here'"):
        load_dataset("not_a_module_here:read", ".", "test")


# ------------------------------------------------------------------------------------ streaming


def test_streaming_yields_the_in_memory_batches(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "f", n=(11, 3))
    memory = load_dataset("folder", root, "train")
    streamed, _ = read_splits("folder", root, stream=True, seed=0)
    assert (streamed.mean, streamed.std) == (memory.mean, memory.std)  # < 1,000 images: all of them
    for kw in ({"shuffle": True, "augment": "crop_flip", "seed": 3}, {"shuffle": False}):
        ours = list(BatchLoader(memory, 4, **kw).iterate(2, with_indices=True))
        theirs = list(make_loader(streamed, 4, workers=2, **kw).iterate(2, with_indices=True))
        assert len(ours) == len(theirs) == 9
        for a, b in zip(ours, theirs):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
    train, val = split_validation(streamed, 5, seed=1)
    m_train, m_val = split_validation(memory, 5, seed=1)
    assert [torch.equal(a[0], b[0]) for a, b in zip(StreamLoader(val, 2, shuffle=False).iterate(0),
                                                     BatchLoader(m_val, 2, shuffle=False).iterate(0))] == [True] * 3
    shards = [list(StreamLoader(train, 8, shuffle=True, seed=0, rank=r, world_size=2).iterate(1)) for r in (0, 1)]
    whole = list(StreamLoader(train, 8, shuffle=True, seed=0).iterate(1))
    for a, b, w in zip(*shards, whole):
        assert torch.equal(torch.cat([a[0], b[0]]), w[0])


@settings(max_examples=8, deadline=None)
@given(epoch=st.integers(0, 3), start=st.integers(0, 4))
def test_stream_random_resized_crop_resumes_exactly(tmp_path_factory, epoch: int, start: int) -> None:
    root = tmp_path_factory.getbasetemp() / "rrc"
    if not root.exists():
        _png_folder(root, n=(6, 1), size=12)
    ds, _ = read_splits("folder", root, stream=True, options={"image_size": 8})
    loader = StreamLoader(ds, 4, shuffle=True, augment="random_resized_crop", seed=5)
    full = list(loader.iterate(epoch))
    tail = list(loader.iterate(epoch, start_batch=start))
    assert len(full) == 5 and len(tail) == 5 - start
    for a, b in zip(full[start:], tail):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert full[0][0].shape == (4, 3, 8, 8)
    other = list(loader.iterate(epoch + 1))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, other))


@pytest.mark.slow
def test_streamed_training_equals_in_memory_training(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "f", n=(20, 4))
    common = ("data.name=folder", f"data.root={root}", "data.augment=crop_flip", "train.epochs=2")
    a = _train(tmp_path / "a", *common, "name=mem", "data.stream=false")
    b = _train(tmp_path / "b", *common, "name=stream", "data.stream=true", "data.workers=2")
    assert a["test"] == [{**r, "seconds": a["test"][i]["seconds"]} for i, r in enumerate(b["test"])]
    assert [h["val_robust_acc"] for h in a["history"]] == [h["val_robust_acc"] for h in b["history"]]


def test_stream_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be streamed"):
        read_splits("npz", _npz(tmp_path / "n"), stream=True)
    root = _png_folder(tmp_path / "f", n=(2, 1))
    ds, _ = read_splits("folder", root, stream=True)
    with pytest.raises(ConfigError, match="random_resized_crop crops to data.options.image_size"):
        StreamLoader(ds, 2, shuffle=True, augment="random_resized_crop")
    with pytest.raises(ConfigError, match="set data.stream: true"):
        make_loader(load_dataset("folder", root, "train"), 2, shuffle=True, augment="random_resized_crop")


# --------------------------------------------------------------------------- Tiny-ImageNet, ImageNet


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    wnids = ["n01443537", "n01629819", "n01641577"]
    lines = []
    for k, w in enumerate(wnids):
        (root / "train" / w / "images").mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                root / "train" / w / "images" / f"{w}_{i}.JPEG", format="JPEG")
    (root / "val" / "images").mkdir(parents=True)
    for i, k in enumerate([2, 0, 1, 2]):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "val" / "images" / f"val_{i}.JPEG",
                                                                     format="JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[k]}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    train, test = load_dataset("tiny_imagenet", root, "train"), load_dataset("tiny_imagenet", root, "test")
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and train.image_shape == (3, 16, 16)
    assert test.labels.tolist() == [2, 0, 1, 2] and test.num_classes == 3
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ConfigError, match="val_annotations.txt:1"):
        load_dataset("tiny_imagenet", root, "test")


def test_imagenet_layout(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "imagenet", classes=("n01440764", "n01443537"), n=(2, 1), size=20, test="val")
    ds = load_dataset("imagenet", root, "test", options={"image_size": 8, "resize": 10})
    assert ds.image_shape == (3, 8, 8) and ds.mean == (0.485, 0.456, 0.406) and ds.labels.tolist() == [0, 1]
    flat = tmp_path / "flat"
    (flat / "train" / "n01440764").mkdir(parents=True)
    (flat / "val").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(flat / "val" / "ILSVRC2012_val_00000001.JPEG", format="JPEG")
    with pytest.raises(ConfigError, match=r"validation images directly; they must be sorted into class folders"):
        load_dataset("imagenet", flat, "test")


def test_large_scale_recipes_build_their_data(tmp_path: Path) -> None:
    """The Tiny-ImageNet recipe reads its layout into memory; the ImageNet one streams with random resized crops."""
    from robustrain.build import build_data

    recipes = Path(__file__).resolve().parents[1] / "configs"
    tiny = tmp_path / "tiny"
    wnids = ["n01443537", "n01629819"]
    for w in wnids:
        (tiny / "train" / w / "images").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((64, 64, 3), 20 * i, np.uint8)).save(tiny / "train" / w / "images" / f"{i}.JPEG",
                                                                        format="JPEG")
    (tiny / "val" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tiny / "val" / "images" / "val_0.JPEG", format="JPEG")
    (tiny / "val" / "val_annotations.txt").write_text(f"val_0.JPEG\t{wnids[1]}\t0\t0\t5\t5\n")
    cfg = load_config(recipes / "tiny_imagenet_nfgsm.yaml", [f"data.root={tiny}", "data.val_size=2", "data.workers=0"])
    data = build_data(cfg)
    assert isinstance(data.train, BatchLoader) and data.info.num_classes == 2 and data.info.image_shape == (3, 64, 64)
    assert len(data.train.dataset) == 10 and data.test.dataset.labels.tolist() == [1]

    imagenet = _png_folder(tmp_path / "imagenet", classes=tuple(wnids), n=(5, 2), size=40, test="val")
    cfg = load_config(recipes / "imagenet_fgsm_rs.yaml", [f"data.root={imagenet}", "data.val_size=2", "data.workers=0",
                                                          "data.options={image_size: 16, resize: 20}",
                                                          "data.batch_size=4"])
    assert cfg.threat.eps == pytest.approx(4 / 255) and cfg.train.amp == "bf16" and cfg.model.name == "timm:resnet50"
    data = build_data(cfg)
    assert isinstance(data.train, StreamLoader) and data.info.mean == (0.485, 0.456, 0.406)
    x, y = next(iter(data.train.iterate(0)))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert next(iter(data.test.iterate(0)))[0].shape == (4, 3, 16, 16)
