"""Tests of robustrain.data on real data: digits, MNIST, CIFAR-10 (both layouts), SVHN and CIFAR-100 files."""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustrain.data import DATASETS, ArrayDataset, BatchLoader, load_dataset, split_validation
from robustrain.data.augment import crop_flip, random_crop_flip
from robustrain.data.dataset import channel_stats
from robustrain.data.digits import stratified_split
from robustrain.data.mnist import read_idx
from robustrain.errors import ConfigError, DataNotFoundError, UnknownNameError

from conftest import SHARED_DATA
MNIST_DIR = SHARED_DATA / "mnist"
GET_CIFAR10 = SHARED_DATA / "get_cifar10.py"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST files not found in {MNIST_DIR}")


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cifar10_bin_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official CIFAR-10 binary version, built by get_cifar10.py (kept in pytest's cache between runs;
    the script re-verifies every byte of files already there)."""
    if not GET_CIFAR10.is_file() or shutil.which("npm") is None:
        pytest.skip("get_cifar10.py or npm not available")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = cache.mkdir("robustrain_cifar10") if cache is not None else tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, str(GET_CIFAR10), str(root)], check=True, capture_output=True)
    return Path(root)


@pytest.fixture(scope="session")
def cifar10_raw(cifar10_bin_root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(N x 3072 pixels, N labels) of each official file, parsed here independently of the library."""
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = np.fromfile(cifar10_bin_root / "cifar-10-batches-bin" / f"{name}.bin", np.uint8).reshape(-1, 3073)
        out[name] = (rows[:, 1:].copy(), rows[:, 0].copy())
    return out


@pytest.fixture(scope="session")
def cifar10_bin(cifar10_bin_root: Path) -> dict[str, ArrayDataset]:
    return {split: load_dataset("cifar10", cifar10_bin_root, split) for split in ("train", "test")}


def _py2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _py2_int(i: int) -> bytes:
    return b"K" + bytes([i]) if i < 256 else b"M" + struct.pack("<H", i)


def py2_pickle(obj: dict[str, np.ndarray | list[int] | bytes]) -> bytes:
    """What Python 2's cPickle (protocol 2) writes for the CIFAR python files: keys and pixel data are
    Python 2 ``str`` (BINSTRING), arrays reference ``numpy.core.multiarray._reconstruct``."""
    out = [b"\x80\x02}("]
    for key, value in obj.items():
        out.append(_py2_str(key.encode()))
        if isinstance(value, np.ndarray):
            assert value.dtype == np.uint8 and value.ndim == 2
            out += [
                b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85", _py2_str(b"b"), b"\x87R",
                b"(K\x01", _py2_int(value.shape[0]), _py2_int(value.shape[1]), b"\x86",
                b"cnumpy\ndtype\n", _py2_str(b"u1"), b"K\x00K\x01\x87R(K\x03", _py2_str(b"|"),
                b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89", _py2_str(value.tobytes()), b"tb",
            ]
        elif isinstance(value, list):
            out += [b"](", *(_py2_int(i) for i in value), b"e"]
        else:
            out.append(_py2_str(value))
    return b"".join(out) + b"u."


def test_py2_pickle_helper_is_valid() -> None:
    data = np.arange(6 * 3072, dtype=np.int64).astype(np.uint8).reshape(6, 3072)
    obj = pickle.loads(py2_pickle({"data": data, "labels": [1, 300], "batch_label": b"x"}), encoding="bytes")
    assert sorted(obj) == [b"batch_label", b"data", b"labels"] and obj[b"labels"] == [1, 300]
    assert np.array_equal(obj[b"data"], data)


@pytest.fixture(scope="session")
def cifar10_pickle_root(cifar10_raw, tmp_path_factory: pytest.TempPathFactory):
    """torchvision's python layout written from the official arrays in the original files' format."""
    root = tmp_path_factory.mktemp("cifar10_py")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name, (data, labels) in cifar10_raw.items():
        batch = {"batch_label": f"{name} of 5".encode(), "labels": labels.tolist(), "data": data}
        (folder / name).write_bytes(py2_pickle(batch))
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 180 MB: do not leave it in pytest's kept tmp dirs


@pytest.fixture(scope="session")
def mnist_flat() -> dict[str, ArrayDataset]:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST files not found in {MNIST_DIR}")
    return {split: load_dataset("mnist", MNIST_DIR, split) for split in ("train", "test")}


def indexed_dataset(n: int, shape: tuple[int, int, int] = (1, 2, 2)) -> ArrayDataset:
    """Example i has label i and every pixel equal to i % 256, so batches can be traced to examples."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, *shape).contiguous()
    return ArrayDataset(images, torch.arange(n), max(n, 1), (0.5,) * shape[0], (0.25,) * shape[0], "indexed")


def random_dataset(n: int, shape: tuple[int, int, int] = (3, 8, 8), seed: int = 0) -> ArrayDataset:
    """Random images with pixels 1..255 (never 0, so zero padding is recognisable), label = index."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return ArrayDataset(images, torch.arange(n), n, (0.5,) * shape[0], (0.25,) * shape[0], "random")


def run_epoch(loader: BatchLoader, epoch: int, start_batch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.iterate(epoch, start_batch))


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ------------------------------------------------------------------------------------------ registry


def test_dataset_names() -> None:
    assert DATASETS.names() == ("cifar10", "cifar100", "svhn", "mnist", "digits", "folder", "imagenet", "tiny_imagenet",
                                "npz")


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_dataset("cifar11", "/nowhere", "train")
    msg = str(info.value)
    assert "'cifar11'" in msg and "Did you mean 'cifar10'?" in msg
    for name in DATASETS:
        assert name in msg
    assert isinstance(info.value, KeyError)


def test_bad_split_and_missing_root() -> None:
    with pytest.raises(ConfigError, match=r"unknown split 'val'.*'train' or 'test'.*split_validation"):
        load_dataset("digits", None, "val")
    with pytest.raises(ConfigError, match=r"'cifar10' needs a data root"):
        load_dataset("cifar10", None, "train")


@pytest.mark.parametrize(
    "name, expected_paths, fix",
    [
        ("cifar10", ["cifar-10-batches-py", "cifar-10-batches-bin"], "data_batch_1..5.bin"),
        ("cifar100", ["cifar-100-python", "cifar-100-binary"], "cifar-100-python/"),
        ("svhn", [""], "train_32x32.mat"),
        ("mnist", ["MNIST/raw", ""], "train-images-idx3-ubyte[.gz]"),
    ],
)
def test_missing_data_names_paths_and_fix(tmp_path: Path, name: str, expected_paths: list[str], fix: str) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, root, "train")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for sub in expected_paths:
        assert f"  {root / sub if sub else root}  (" in msg
    assert "folder does not exist" in msg
    assert "data.download: true" in msg and fix in msg
    assert not root.exists()  # nothing is created when download is False


def test_missing_single_file_is_named(cifar10_bin_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 5):  # data_batch_5.bin is missing
        os.symlink(cifar10_bin_root / "cifar-10-batches-bin" / f"data_batch_{i}.bin", folder / f"data_batch_{i}.bin")
    with pytest.raises(DataNotFoundError, match=rf"{folder}  \(official binary layout: missing data_batch_5.bin\)"):
        load_dataset("cifar10", tmp_path, "train")


# -------------------------------------------------------------------------------------------- digits


def test_digits_shapes_values_and_stats() -> None:
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", None, "train"), load_dataset("Digits", None, "test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert train.num_classes == 10 and set(test.labels.tolist()) == set(range(10))
    # values 0..16 scaled to 0..255, train and test are exactly the split of the bundled data
    bunch = load_digits()
    scaled = torch.from_numpy(np.rint(bunch.images * 255 / 16).astype(np.uint8))[:, None]
    train_idx, test_idx = stratified_split(bunch.target, 0.2, 0)
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert np.array_equal(np.union1d(train_idx, test_idx), np.arange(1797))
    assert torch.equal(train.images, scaled[train_idx]) and torch.equal(test.images, scaled[test_idx])
    assert torch.equal(test.labels, torch.from_numpy(bunch.target[test_idx]).long())
    # stratified: each class gives 20 % of its examples to test
    counts = np.bincount(bunch.target)
    assert np.array_equal(np.bincount(test.labels.numpy()), np.rint(0.2 * counts).astype(int))
    # statistics are those of the training part, reported for both splits
    x = train.images.double() / 255
    assert train.mean == pytest.approx((float(x.mean()),), abs=1e-12)
    assert train.std == pytest.approx((float(x.std(correction=0)),), abs=1e-12)
    assert test.mean == train.mean and test.std == train.std
    # fixed: the seeded split is pinned (changing it would silently change every digits result)
    assert test_idx[:12].tolist() == [3, 7, 13, 19, 36, 38, 43, 48, 53, 55, 60, 62] and int(test_idx.sum()) == 311827
    # fixed: a second load gives identical tensors
    assert torch.equal(load_dataset("digits", None, "test").images, test.images)


# --------------------------------------------------------------------------------------------- MNIST


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_flat_gz_folder(mnist_flat) -> None:
    train, test = mnist_flat["train"], mnist_flat["test"]
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and test.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    mean, std = channel_stats(train.images)
    assert mean == pytest.approx(train.mean, abs=1e-4) and std == pytest.approx(train.std, abs=1e-4)
    assert train.mean == (0.1307,) and train.std == (0.3081,)
    assert int(test.images[0, 0, 0, 0]) == 0 and int(test.images[0].max()) == 255


@needs_mnist
def test_mnist_torchvision_layout_matches_flat(mnist_flat, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        if name.startswith("t10k"):  # test files uncompressed, train files gzipped: both forms occur
            (raw / name).write_bytes(gzip.decompress((MNIST_DIR / f"{name}.gz").read_bytes()))
        else:
            shutil.copy(MNIST_DIR / f"{name}.gz", raw / f"{name}.gz")
    for split in ("train", "test"):
        ds = load_dataset("mnist", tmp_path, split)
        assert torch.equal(ds.images, mnist_flat[split].images)
        assert torch.equal(ds.labels, mnist_flat[split].labels)


@needs_mnist
def test_idx_parser_and_truncated_file(tmp_path: Path) -> None:
    content = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(content)
    labels = read_idx(path)
    assert labels.shape == (10000,) and labels[:5].tolist() == [7, 2, 1, 0, 4]
    path.write_bytes(content[:500])
    with pytest.raises(DataNotFoundError, match=r"announces \(10000,\) = 10000 bytes, found 492"):
        read_idx(path)


# ------------------------------------------------------------------------------------------ CIFAR-10


def test_cifar10_binary(cifar10_bin, cifar10_raw) -> None:
    train, test = cifar10_bin["train"], cifar10_bin["test"]
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # CHW: the 3072 bytes of a record are the R plane, then G, then B, each row-major
    data5, _ = cifar10_raw["data_batch_5"]
    assert np.array_equal(train.images[40000 + 17].numpy(), data5[17].reshape(3, 32, 32))
    assert np.array_equal(train.images[40000 + 17, 1, 2, 3].numpy(), data5[17, 1024 + 2 * 32 + 3])
    mean, std = channel_stats(train.images)  # the published statistics are those of this data
    assert mean == pytest.approx(train.mean, abs=1e-3) and std == pytest.approx(train.std, abs=1e-3)
    assert train.num_classes == 10 and train.name == "cifar10"


def test_cifar10_python_layout_matches_binary(cifar10_pickle_root: Path, cifar10_bin) -> None:
    assert not (cifar10_pickle_root / "cifar-10-batches-bin").exists()
    for split in ("train", "test"):
        ds = load_dataset("cifar10", cifar10_pickle_root, split)
        assert torch.equal(ds.images, cifar10_bin[split].images)
        assert torch.equal(ds.labels, cifar10_bin[split].labels)
        assert ds.mean == cifar10_bin[split].mean


def test_cifar10_download_flag_reads_present_files(cifar10_bin_root: Path, cifar10_bin) -> None:
    ds = load_dataset("cifar10", str(cifar10_bin_root), "test", download=True)  # present: no download
    assert torch.equal(ds.images, cifar10_bin["test"].images)


def test_truncated_binary_file(cifar10_bin_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    data = (cifar10_bin_root / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    (folder / "test_batch.bin").write_bytes(data[:5000])
    with pytest.raises(DataNotFoundError, match=r"size 5000 bytes is not a positive multiple of the 3073-byte"):
        load_dataset("cifar10", tmp_path, "test")


# ------------------------------------------------------------------------------ SVHN, CIFAR-100 files


def test_svhn_mat_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 7
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.array([[10], [1], [2], [9], [10], [5], [3]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x[..., :3], "y": y[:3]})
    ds = load_dataset("svhn", tmp_path, "train")
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 1, 2, 9, 0, 5, 3]  # 10 is the digit 0
    # images[i, c, h, w] == X[h, w, c, i]
    assert np.array_equal(ds.images.numpy(), x.transpose(3, 2, 0, 1))
    assert int(ds.images[4, 2, 5, 30]) == int(x[5, 30, 2, 4])
    assert ds.mean == (0.4377, 0.4438, 0.4728) and ds.num_classes == 10
    assert len(load_dataset("svhn", tmp_path, "test")) == 3


def _cifar100_arrays(n: int = 9):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    fine = np.array([0, 99, 17, 42, 5, 63, 99, 1, 2][:n])
    coarse = fine // 5
    return data, fine, coarse


def test_cifar100_python_and_binary_layouts(tmp_path: Path) -> None:
    data, fine, coarse = _cifar100_arrays()
    py = tmp_path / "py" / "cifar-100-python"
    py.mkdir(parents=True)
    with open(py / "train", "wb") as f:  # bytes keys, as Python 3 writes them
        pickle.dump({b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}, f)
    with open(py / "test", "wb") as f:  # str keys, as the original Python 2 files read with latin1
        pickle.dump({"data": data[:4], "fine_labels": fine[:4].tolist(), "coarse_labels": [0] * 4}, f, protocol=2)
    binary = tmp_path / "bin" / "cifar-100-binary"
    binary.mkdir(parents=True)
    records = np.concatenate([coarse[:, None].astype(np.uint8), fine[:, None].astype(np.uint8), data], axis=1)
    (binary / "train.bin").write_bytes(records.tobytes())

    ds = load_dataset("cifar100", tmp_path / "py", "train")
    assert ds.images.shape == (9, 3, 32, 32) and ds.num_classes == 100
    assert ds.labels.tolist() == fine.tolist()  # fine labels, not coarse
    assert np.array_equal(ds.images.numpy(), data.reshape(9, 3, 32, 32))
    assert ds.mean == (0.5071, 0.4865, 0.4409)
    test = load_dataset("cifar100", tmp_path / "py", "test")
    assert test.labels.tolist() == fine[:4].tolist() and torch.equal(test.images, ds.images[:4])
    from_bin = load_dataset("cifar100", tmp_path / "bin", "train")
    assert torch.equal(from_bin.images, ds.images) and torch.equal(from_bin.labels, ds.labels)


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.write_text("still here")

    class Evil:
        def __reduce__(self):
            return (os.remove, (str(marker),))

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "test").write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": []}))
    with pytest.raises(DataNotFoundError, match=r"refusing to load (posix|nt|os)\.remove"):
        load_dataset("cifar100", tmp_path, "test")
    assert marker.read_text() == "still here"


def test_download_flag_calls_torchvision_then_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """download=True hands torchvision the root; what it writes there, in its layout, is then read.

    torchvision itself is replaced by a stand-in that writes the real files where torchvision.datasets.MNIST
    puts them (ROOT/MNIST/raw), since there is no internet here (and importing it costs seconds)."""
    if not MNIST_DIR.is_dir():
        pytest.skip("MNIST files not available")
    calls = []

    def fake_mnist(root: str, train: bool = True, download: bool = False) -> None:
        calls.append((root, train, download))
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name in MNIST_FILES:
            shutil.copy(MNIST_DIR / f"{name}.gz", raw / f"{name}.gz")

    package, datasets = types.ModuleType("torchvision"), types.ModuleType("torchvision.datasets")
    datasets.MNIST = fake_mnist  # type: ignore[attr-defined]
    package.datasets = datasets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    ds = load_dataset("mnist", tmp_path / "new", "test", download=True)
    assert calls == [(str(tmp_path / "new"), False, True)]
    assert ds.images.shape == (10000, 1, 28, 28) and torch.bincount(ds.labels).tolist() == MNIST_TEST_COUNTS
    assert load_dataset("mnist", tmp_path / "new", "test", download=True).labels.equal(ds.labels)
    assert len(calls) == 1  # present now: no second download

    def offline_mnist(root: str, train: bool = True, download: bool = False) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    datasets.MNIST = offline_mnist  # type: ignore[attr-defined]
    with pytest.raises(DataNotFoundError, match=r"downloading 'mnist' into .*offline with torchvision failed "
                       r"\(RuntimeError: Error downloading.*Looked in:"):
        load_dataset("mnist", tmp_path / "offline", "train", download=True)


# --------------------------------------------------------------------------------------- ArrayDataset


def test_array_dataset_validation() -> None:
    ok = indexed_dataset(4)
    with pytest.raises(ConfigError, match="uint8 tensor"):
        ArrayDataset(ok.images.float(), ok.labels, 4, (0.5,), (0.2,), "x")
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 3\)"):
        ArrayDataset(ok.images, ok.labels, 3, (0.5,), (0.2,), "x")
    with pytest.raises(ConfigError, match="one value per channel"):
        ArrayDataset(ok.images, ok.labels, 4, (0.5, 0.5, 0.5), (0.2,) * 3, "x")
    with pytest.raises(ConfigError, match="4 images but 3 labels"):
        ArrayDataset(ok.images, ok.labels[:3], 4, (0.5,), (0.2,), "x")


# ------------------------------------------------------------------------------------- validation split


def test_split_validation_disjoint_deterministic() -> None:
    ds = indexed_dataset(500)
    torch.manual_seed(1)
    train, val = split_validation(ds, 100, seed=3)
    torch.manual_seed(2)  # the global RNG plays no part
    train2, val2 = split_validation(ds, 100, seed=3)
    assert len(train) == 400 and len(val) == 100
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(500))
    assert torch.equal(val.labels, val2.labels) and torch.equal(train.images, train2.images)
    assert val.labels.tolist() == sorted(val.labels.tolist())  # original order kept
    assert torch.equal(val.images[:, 0, 0, 0], val.labels.to(torch.uint8))  # images follow their labels
    _, val_other = split_validation(ds, 100, seed=4)
    assert not torch.equal(val.labels, val_other.labels)
    assert val.num_classes == ds.num_classes and val.mean == ds.mean and val.name == ds.name
    empty_train, empty_val = split_validation(ds, 0, seed=0)
    assert len(empty_train) == 500 and len(empty_val) == 0


@pytest.mark.parametrize("bad", [-1, 500, 501, 1.5, True])
def test_split_validation_rejects_bad_size(bad) -> None:
    with pytest.raises(ConfigError, match="val_size must be"):
        split_validation(indexed_dataset(500), bad, seed=0)


def test_split_validation_on_cifar10(cifar10_bin) -> None:
    train, val = split_validation(cifar10_bin["train"], 1000, seed=0)
    assert len(train) == 49000 and len(val) == 1000 and val.images.shape == (1000, 3, 32, 32)
    counts = torch.bincount(val.labels, minlength=10)
    assert counts.sum() == 1000 and counts.min() > 60  # a random subset hits every class


# ------------------------------------------------------------------------------------------- loader


def test_loader_plain_epoch_is_the_dataset() -> None:
    ds = random_dataset(10)
    loader = BatchLoader(ds, 3, shuffle=False)
    batches = run_epoch(loader, 0)
    assert len(loader) == 4 and [len(y) for _, y in batches] == [3, 3, 3, 1]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.device.type == "cpu"
    assert torch.equal(x, ds.images.float() / 255) and torch.equal(torch.cat([b[1] for b in batches]), ds.labels)
    assert len(BatchLoader(ds, 3, shuffle=False, drop_last=True)) == 3
    assert_same_batches(list(loader), batches)  # __iter__ is epoch 0


def test_loader_does_not_alias_dataset() -> None:
    ds = random_dataset(6)
    before = ds.images.clone(), ds.labels.clone()
    for x, y in BatchLoader(ds, 4, shuffle=False):
        x.zero_()
        y.zero_()
    assert torch.equal(ds.images, before[0]) and torch.equal(ds.labels, before[1])


def test_loader_order_seeded_not_global() -> None:
    ds = indexed_dataset(50)
    a = BatchLoader(ds, 8, shuffle=True, seed=5)
    torch.manual_seed(0)
    first = run_epoch(a, 3)
    torch.manual_seed(99)
    torch.rand(10)
    assert_same_batches(run_epoch(BatchLoader(ds, 8, shuffle=True, seed=5), 3), first)
    order = torch.cat([y for _, y in first])
    assert order.tolist() != list(range(50)) and sorted(order.tolist()) == list(range(50))
    assert torch.equal(order, a.order(3))
    assert not torch.equal(torch.cat([y for _, y in run_epoch(a, 4)]), order)  # new epoch, new order
    other_seed = BatchLoader(ds, 8, shuffle=True, seed=6)
    assert not torch.equal(torch.cat([y for _, y in run_epoch(other_seed, 3)]), order)


@pytest.mark.parametrize("augment", [None, "crop_flip"])
def test_loader_exact_resume(augment) -> None:
    loader = BatchLoader(random_dataset(103), 10, shuffle=True, augment=augment, seed=11)
    full = run_epoch(loader, 2)
    assert len(full) == 11
    for start in (0, 1, 5, 10, 11):
        torch.manual_seed(start)  # a resumed process has some other global RNG state
        assert_same_batches(run_epoch(loader, 2, start), full[start:])
    # a new loader (as after a restart) gives the same batches
    again = BatchLoader(random_dataset(103), 10, shuffle=True, augment=augment, seed=11)
    assert_same_batches(run_epoch(again, 2, 7), full[7:])


def test_loader_bad_arguments() -> None:
    ds = indexed_dataset(10)
    loader = BatchLoader(ds, 3, shuffle=True)
    with pytest.raises(ConfigError, match=r"start_batch must be an int in \[0, 4\]"):
        loader.iterate(0, 5)  # raised at the call, not at the first next()
    with pytest.raises(ConfigError, match="epoch must be a non-negative int"):
        loader.iterate(-1)
    with pytest.raises(ConfigError, match=r"unknown augmentation 'flip'; expected None or one of: crop_flip, crop"):
        BatchLoader(ds, 3, shuffle=True, augment="flip")
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        BatchLoader(ds, 0, shuffle=True)
    with pytest.raises(ConfigError, match="every epoch would be empty"):
        BatchLoader(ds, 11, shuffle=True, drop_last=True)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    batch_size=st.integers(1, 70),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 1000),
    data=st.data(),
)
def test_loader_batches_partition_dataset(n, batch_size, drop_last, shuffle, seed, epoch, data) -> None:
    ds = indexed_dataset(n)
    if drop_last and batch_size > n:
        with pytest.raises(ConfigError):
            BatchLoader(ds, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
        return
    loader = BatchLoader(ds, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
    batches = run_epoch(loader, epoch)
    assert len(batches) == len(loader)
    sizes = [len(y) for _, y in batches]
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    labels = torch.cat([y for _, y in batches]).tolist()
    assert len(set(labels)) == len(labels)  # no example twice
    if drop_last:
        assert len(labels) == (n // batch_size) * batch_size and sizes[-1] == batch_size
    else:
        assert sorted(labels) == list(range(n))  # every example once
    if not shuffle:
        assert labels == sorted(labels)
    for x, y in batches:  # each image is the one of its label
        assert torch.equal(x[:, 0, 0, 0], (y % 256).float() / 255)
    start = data.draw(st.integers(0, len(loader)))
    assert_same_batches(run_epoch(loader, epoch, start), batches[start:])


# -------------------------------------------------------------------------------------- augmentation


def reference_crop_flip(img: torch.Tensor, dy: int, dx: int, flip: bool, pad: int) -> torch.Tensor:
    """Pixel-by-pixel definition: crop of the zero-padded image at (dy, dx), then optional mirror."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    for r in range(h):
        for col in range(w):
            sr, sc = r + dy - pad, col + dx - pad
            if 0 <= sr < h and 0 <= sc < w:
                out[:, r, col] = img[:, sr, sc]
    return out.flip(-1) if flip else out


def test_crop_of_known_image_is_shifted_copy() -> None:
    img = random_dataset(1, (3, 6, 7)).images  # 1 x 3 x 6 x 7, non-square to catch row/column mix-ups
    shifted = crop_flip(img, torch.tensor([[6, 1]]), torch.tensor([False]), pad=4)[0]
    # explicit: crop at (pad + 2, pad - 3) moves content up 2 rows and right 3 columns, zero-filled
    assert torch.equal(shifted[:, :4, 3:], img[0, :, 2:, :4])
    assert torch.equal(shifted[:, 4:, :], torch.zeros(3, 2, 7, dtype=torch.uint8))
    assert torch.equal(shifted[:, :, :3], torch.zeros(3, 6, 3, dtype=torch.uint8))
    identity = crop_flip(img, torch.tensor([[4, 4]]), torch.tensor([False]), pad=4)
    mirrored = crop_flip(img, torch.tensor([[4, 4]]), torch.tensor([True]), pad=4)
    assert torch.equal(identity, img) and torch.equal(mirrored, img.flip(-1))


def test_crop_flip_matches_reference_for_every_offset() -> None:
    imgs = random_dataset(2 * 81, (2, 5, 6)).images
    offsets = torch.tensor([(dy, dx) for dy in range(9) for dx in range(9)] * 2)
    flips = torch.tensor([False] * 81 + [True] * 81)
    out = crop_flip(imgs, offsets, flips, pad=4)
    for i in range(len(imgs)):
        dy, dx = offsets[i].tolist()
        assert torch.equal(out[i], reference_crop_flip(imgs[i], dy, dx, bool(flips[i]), 4)), (dy, dx, bool(flips[i]))


def test_random_crop_flip_draws_real_crops_and_flips() -> None:
    imgs = random_dataset(200, (3, 8, 8), seed=3).images
    out = random_crop_flip(imgs, torch.Generator().manual_seed(0), pad=4)
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    # all 162 crop/flip candidates of each image (crop_flip itself is checked against the reference above)
    cands = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)]
    offsets = torch.tensor([(dy, dx) for dy, dx, _ in cands])
    flips = torch.tensor([f for *_, f in cands])
    all_crops = crop_flip(imgs.repeat_interleave(len(cands), 0), offsets.repeat(len(imgs), 1), flips.repeat(len(imgs)), 4)
    hits = (all_crops.view(len(imgs), len(cands), -1) == out.view(len(imgs), 1, -1)).all(2)  # image x candidate
    assert hits.sum(1).tolist() == [1] * len(imgs)  # each output is exactly one crop/flip of its own image
    seen = {cands[j] for j in hits.int().argmax(1).tolist()}
    assert {f for *_, f in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 40  # offsets spread over the 81 possible


def test_loader_augmentation_changes_images_not_labels() -> None:
    ds = random_dataset(64, (3, 8, 8), seed=4)
    plain = run_epoch(BatchLoader(ds, 16, shuffle=True, seed=2), 1)
    aug = run_epoch(BatchLoader(ds, 16, shuffle=True, augment="crop_flip", seed=2), 1)
    for (xp, yp), (xa, ya) in zip(plain, aug):
        assert torch.equal(yp, ya)  # same order: augmentation draws from its own generator
        assert xa.shape == xp.shape and xa.dtype == torch.float32
        assert 0.0 <= float(xa.min()) and float(xa.max()) <= 1.0
        assert not torch.equal(xa, xp)
        assert bool((xa == 0).any())  # zero padding shows up
    # "crop" never mirrors: without padding it is the identity
    crop_only = run_epoch(BatchLoader(ds, 16, shuffle=True, augment="crop", crop_padding=0, seed=2), 1)
    assert_same_batches(crop_only, plain)
    flip_only = run_epoch(BatchLoader(ds, 64, shuffle=False, augment="crop_flip", crop_padding=0), 0)[0][0]
    mirrored = [torch.equal(flip_only[i], ds.images[i].flip(-1).float() / 255) for i in range(64)]
    kept = [torch.equal(flip_only[i], ds.images[i].float() / 255) for i in range(64)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 10 < sum(mirrored) < 54


def test_loader_augmentation_per_batch_seed() -> None:
    ds = random_dataset(40, (3, 8, 8))
    loader = BatchLoader(ds, 20, shuffle=False, augment="crop_flip", seed=0)
    e0, e1 = run_epoch(loader, 0), run_epoch(loader, 1)
    assert not torch.equal(e0[0][0], e1[0][0])  # another epoch, other crops of the same images
    assert not torch.equal(e0[0][0], run_epoch(BatchLoader(ds, 20, shuffle=False, augment="crop_flip", seed=1), 0)[0][0])


def test_loader_augmentation_differs_between_batches() -> None:
    """Each batch index has its own draws: identical images in two batches get different crops."""
    image = random_dataset(1, (3, 8, 8)).images
    ds = ArrayDataset(image.expand(64, -1, -1, -1).contiguous(), torch.zeros(64, dtype=torch.int64), 10,
                      (0.5,) * 3, (0.25,) * 3, "same")
    batches = run_epoch(BatchLoader(ds, 32, shuffle=False, augment="crop_flip", seed=0), 0)
    assert not torch.equal(batches[0][0], batches[1][0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_cuda_matches_cpu() -> None:
    ds = random_dataset(50)
    cpu = run_epoch(BatchLoader(ds, 16, shuffle=True, augment="crop_flip", seed=1), 2)
    gpu = run_epoch(BatchLoader(ds, 16, shuffle=True, augment="crop_flip", seed=1, device="cuda"), 2)
    assert gpu[0][0].device.type == "cuda"
    assert_same_batches([(x.cpu(), y.cpu()) for x, y in gpu], cpu)
