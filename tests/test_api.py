"""The Python-first API (``robustrain.train``, ``load_model``, ``evaluate``, ``build_attack``, ``list_recipes``) and the
bundled recipes (``robustrain train -c <name>`` from any folder, ``robustrain recipes``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustrain as rt
from robustrain.errors import CheckpointError, ConfigError, UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train": {"epochs": 1, "progress": False}, "data": {"train_subset": 256, "val_size": 100},
        "wandb": {"mode": "disabled"}, "eval": {"n_ex": 100, "attack": {"name": "pgd", "steps": 2, "restarts": 1}},
        "validation": {"fgsm": False}}


def _env() -> dict[str, str]:
    """This checkout's robustrain first on the path (the venv may hold an editable install of another one)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("api")
    result = rt.train("quickstart_digits", name="api_run", out_dir=str(out / "runs"), **TINY)
    return {"result": result, "cwd": out}


def test_train_returns_the_run(digits_run: dict) -> None:
    result = digits_run["result"]
    run_dir = Path(result["run_dir"])
    assert run_dir == digits_run["cwd"] / "runs" / "api_run"
    assert json.loads((run_dir / "summary.json").read_text())["test"] == result["test"]
    assert [r["checkpoint"] for r in result["test"]] == ["best", "last"] and len(result["history"]) == 1


def test_load_model_from_a_run_folder_in_a_fresh_process(digits_run: dict) -> None:
    run_dir = Path(digits_run["result"]["run_dir"])
    model = rt.load_model(run_dir)
    assert not model.training
    best = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    code = ("import torch, robustrain as rt; m = rt.load_model('runs/api_run'); "
            "x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)); "
            "print(m.training, m(x).argmax(1).tolist())")
    out = subprocess.run([sys.executable, "-c", code], cwd=digits_run["cwd"], env=_env(), capture_output=True,
                         text=True, check=True)
    assert out.stdout.split(None, 1) == ["False", f"{model(x).argmax(1).tolist()}\n"]
    last = rt.load_model(run_dir / "last.pt")
    assert not last.training
    with pytest.raises(CheckpointError, match="holds no best.pt"):
        rt.load_model(run_dir.parent)


def test_load_model_of_a_checkpoint_without_model_info(digits_run: dict, tmp_path: Path) -> None:
    """Checkpoints written before they stored the data's shape: the model is rebuilt from the run's dataset."""
    ckpt = torch.load(Path(digits_run["result"]["run_dir"]) / "last.pt", weights_only=True)
    assert ckpt["model_info"]["num_classes"] == 10 and ckpt["model_info"]["image_shape"] == [1, 8, 8]
    del ckpt["model_info"]
    torch.save(ckpt, tmp_path / "old.pt")
    model = rt.load_model(tmp_path / "old.pt")
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())


def test_evaluate_accepts_tensors_a_dataloader_and_a_dataset_name(digits_run: dict) -> None:
    from robustrain.data import load_dataset

    model = rt.load_model(digits_run["result"]["run_dir"])
    test = load_dataset("digits", None, "test")
    x, y = test.images[:60].float() / 255, test.labels[:60]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=25)
    kw = {"eps": 0.1, "attacks": {"pgd": {"steps": 3, "restarts": 1}}, "n_ex": 60}
    reports = [rt.evaluate(model, data, **kw) for data in ((x, y), loader, "digits", test)]
    accuracies = [r["accuracy"] for r in reports]
    assert all(a == accuracies[0] for a in accuracies), accuracies
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert accuracies[0]["clean"] == pytest.approx(clean)
    assert 0 <= accuracies[0]["worst_case"] <= accuracies[0]["clean"]
    assert reports[0]["n_ex"] == 60 and reports[0]["threat"] == {"norm": "linf", "eps": 0.1}
    with pytest.raises(ConfigError, match="unknown key"):
        rt.evaluate(model, (x, y), eps=0.1, attacks={"pgd": {"stepz": 3}})


def test_build_attack() -> None:
    pgd = rt.build_attack("pgd", eps="8/255", steps=3, step="2/255")
    assert pgd.threat.eps == pytest.approx(8 / 255) and pgd.step == pytest.approx(2 / 255)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    x_adv = pgd(model, x, y).x_adv
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1
    with pytest.raises(ConfigError, match="/255"):
        rt.build_attack("pgd", eps=8)
    with pytest.raises(UnknownNameError, match="Did you mean 'pgd'"):
        rt.build_attack("pgdd")


def test_config_forms_and_overrides(tmp_path: Path) -> None:
    from robustrain.api import _config, _overrides
    from robustrain.config import Config, load_config

    assert _overrides({"train": {"epochs": 3}, "name": "x", "eval": {"attack": {"name": "pgd", "steps": 5}}}) == [
        "train.epochs=3", 'name="x"', 'eval.attack={"name": "pgd", "steps": 5}']
    by_name = _config("quickstart_digits", ["train.epochs=2"])
    assert by_name == load_config(ROOT / "configs" / "quickstart_digits.yaml", ["train.epochs=2"])
    assert _config({"name": "d", "train": {"epochs": 4}}, ["seed=3"]).train.epochs == 4
    assert _config(Config(), ["seed=3"]).seed == 3
    with pytest.raises(ConfigError, match="not the name of a bundled recipe"):
        _config("no_such_recipe", [])
    with pytest.raises(ConfigError, match="Did you mean 'cifar10_fgsm_rs'"):
        _config("cifar10_fgsm_r", [])


def test_list_recipes_and_the_recipes_command() -> None:
    recipes = rt.list_recipes()
    files = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert sorted(recipes) == files and "quickstart_digits" in recipes
    assert recipes["imagenet_fgsm_rs"].split()[:4] == ["imagenet", "fgsm_rs", "linf", "4/255"]
    out = subprocess.run([sys.executable, "-m", "robustrain", "recipes"], cwd="/", env=_env(), capture_output=True,
                         text=True, check=True)
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[:len(files)]] == files
    assert all(len(line.split()) > 5 for line in lines[:len(files)])


@pytest.mark.slow
def test_bundled_recipe_trains_from_another_folder(tmp_path: Path) -> None:
    """``robustrain train -c <bundled name>`` in a folder that is not the repository (its defaults: files resolve
    inside the package)."""
    cmd = [sys.executable, "-m", "robustrain", "train", "-c", "cifar10_fgsm_rs.yaml", "--set", "data.name=digits",
           "--set", "model.name=small_cnn", "--set", "model.kwargs={input_size: 8}", "--set", "threat.eps=0.1",
           "--set", "attack.step=0.125", "--set", "data.augment=null", "--set", "data.val_size=50", "--set",
           "data.train_subset=128", "--set", "train.epochs=1", "--set", "train.progress=false", "--set",
           "wandb.mode=disabled", "--set", "eval.n_ex=50", "--set", "eval.attack={name: pgd, steps: 2, restarts: 1}",
           "--set", "validation.attack={name: pgd, steps: 2, restarts: 1}"]
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    config = (tmp_path / "runs" / "cifar10_fgsm_rs" / "config.yaml").read_text()
    assert "cycle_momentum: true" in config and "weight_decay: 0.0005" in config  # from the recipe and its base
    bad = subprocess.run([sys.executable, "-m", "robustrain", "train", "-c", "configs/cifar10_fgsm_rs.yaml"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "use -c cifar10_fgsm_rs" in bad.stderr
