"""Config validation and the CLI: every bad input gets a message with what was received, what was
expected and how to fix it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from robustrain.cli import main
from robustrain.config import Config, dump_yaml, from_dict, load_config, parse_number, to_dict
from robustrain.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
QUICK = ROOT / "configs" / "quickstart_digits.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_loads_and_round_trips(path):
    cfg = load_config(path)
    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


def test_recipes_exist_for_the_issue():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart_digits", "cifar10_fgsm_rs", "cifar10_nfgsm", "cifar10_pgd_at"} <= names


def test_recipe_hyperparameters_match_the_papers():
    wong = load_config(ROOT / "configs" / "cifar10_fgsm_rs.yaml")
    assert wong.attack["name"] == "fgsm_rs" and wong.attack["step"] == pytest.approx(10 / 255)
    assert wong.train.epochs == 15 and wong.optim.lr == 0.2 and wong.schedule.name == "cyclic"
    nf = load_config(ROOT / "configs" / "cifar10_nfgsm.yaml")
    assert nf.attack["init_scale"] == 2.0 and nf.attack["project"] is False and nf.attack["step"] == pytest.approx(8 / 255)
    rice = load_config(ROOT / "configs" / "cifar10_pgd_at.yaml")
    assert rice.attack["steps"] == 10 and rice.attack["step"] == pytest.approx(2 / 255)
    assert rice.schedule.milestones == [100, 150] and rice.train.epochs == 200 and rice.data.val_size == 1000


def test_defaults_round_trip():
    assert from_dict(to_dict(Config())) == Config()


@given(num=st.integers(0, 255), den=st.integers(1, 255))
def test_fractions_are_parsed_not_evaluated(num, den):
    assert parse_number(f"{num}/{den}", "x") == pytest.approx(num / den)


def test_code_is_never_evaluated():
    with pytest.raises(ConfigError, match="fraction"):
        parse_number("__import__('os').getcwd()", "threat.eps")


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match=r"did you mean 'train'"):
        load_config(QUICK, ["trian.epochs=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'train.epochs'"):
        load_config(QUICK, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'attack.steps'"):
        load_config(QUICK, ["attack={name: pgd, stpes: 3}"])


def test_eps_given_in_pixel_levels_is_rejected_with_a_hint():
    with pytest.raises(ConfigError, match=r"8/255") as e:
        load_config(QUICK, ["threat.eps=8"])
    assert "0.031373" in str(e.value)
    with pytest.raises(ConfigError, match=r"2/255"):
        load_config(QUICK, ["attack={name: pgd, step: 2}"])
    assert load_config(QUICK, ["threat.norm=l2", "threat.eps=2"]).threat.eps == 2.0  # fine for L2


def test_unknown_attack_lists_the_choices():
    with pytest.raises(ConfigError, match=r"fgsm, fgsm_mep, fgsm_rs, nfgsm, pgd.*Did you mean 'fgsm_rs'"):
        load_config(QUICK, ["attack.name=fgsm-rs"])


def test_wrong_types_are_reported():
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, got 'ten'"):
        load_config(QUICK, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(QUICK, ["data.download=maybe"])


def test_cli_unknown_model_lists_the_choices(tmp_path, capsys):
    code = main(["train", "-c", str(QUICK), "--set", "model.name=preactresnet18", "--set", f"out_dir={tmp_path}",
                 "--set", "train.progress=false"])
    err = capsys.readouterr().err
    assert code == 2
    assert "preact_resnet18" in err and "small_cnn" in err and "Did you mean 'preact_resnet18'" in err


def test_cli_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = main(["train", "-c", str(ROOT / "configs" / "cifar10_fgsm_rs.yaml"), "--set", f"data.root={missing}",
                 "--set", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(missing) in err and "download" in err and "cifar-10-batches" in err


def test_cli_missing_config_file(capsys):
    assert main(["train", "-c", "configs/nope.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "-c", str(QUICK), "--run-dir", str(run), "--set", "train.epochs=3", "--set",
                 "train.progress=false", "--set", "eval.attack={name: pgd, steps: 5, restarts: 1}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| checkpoint" in out and "pgd-5-1_acc" in out
    code = main(["eval", str(run), "--attack", "pgd", "--steps", "3", "--restarts", "1", "--step", "1/40",
                 "--n-ex", "100"])
    assert code == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["n_ex"] == 100 and report["attack"]["step"] == pytest.approx(0.025)
    assert 0 <= report["pgd-3-1_acc"] <= report["clean_acc"] <= 1  # fractions (README "Units")
    assert report["units"] == "accuracies are fractions in [0, 1]"
    assert main(["eval", str(run), "--eps", "8"]) == 2
    assert "8/255" in capsys.readouterr().err


def test_tables_with_no_rows_still_have_a_header():
    """A run stopped before its first checkpoint has no test rows; its summary table must not crash."""
    from robustrain.tables import format_table

    text = format_table([], ["checkpoint", "clean_acc"])
    assert text.splitlines()[0] == "| checkpoint | clean_acc |"
    assert len(text.splitlines()) == 2
    rows = format_table([{"checkpoint": "best", "clean_acc": 97.5}], ["checkpoint", "clean_acc"]).splitlines()
    assert rows[2] == "| best       | 97.5      |"


@pytest.mark.slow
def test_cli_eval_with_out_writes_nothing_into_the_run_folder(tmp_path, capsys):
    """`eval RUN --out DIR` puts report.json, report.md and the one-row eval.json in DIR and leaves the run folder
    as it was; without --out the run's eval.json is written as before."""
    run = tmp_path / "run"
    assert main(["train", "-c", str(QUICK), "--run-dir", str(run), *sum((["--set", o] for o in [
        "train.epochs=1", "train.progress=false", "data.train_subset=64", "data.val_size=50", "eval.n_ex=50",
        "validation.attack={name: pgd, steps: 2, restarts: 1}", "eval.attack={name: pgd, steps: 2, restarts: 1}"]),
        [])]) == 0
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    fast = ["--attack", "pgd", "--steps", "2", "--restarts", "1", "--n-ex", "20", "--no-progress"]
    out = tmp_path / "elsewhere"
    assert main(["eval", str(run), *fast, "--out", str(out)]) == 0
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "eval.json"}
    assert json.loads((out / "eval.json").read_text())["n_ex"] == 20
    assert main(["eval", str(run), *fast]) == 0
    assert json.loads((run / "eval.json").read_text())["n_ex"] == 20 and (run / "eval" / "report.json").is_file()
