"""scripts/study_mnist.py's table of further evaluations: eval.json holds fractions (units key), an old file
percent; the table shows percent either way (the bug: fractions printed as 1.0 / 0.9)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("study_mnist", ROOT / "scripts" / "study_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extra_table_shows_percent_for_new_and_old_eval_files(tmp_path):
    study = load_script()
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    (tmp_path / "new" / "eval_beta50_last.json").write_text(json.dumps(
        {"clean_acc": 0.985, "beta-50_acc": 0.915, "worst_case_acc": 0.915, "units": "accuracies are fractions"}))
    (tmp_path / "old" / "eval_beta50_last.json").write_text(json.dumps(
        {"clean_acc": 97.5, "beta-50_acc": 80.25, "worst_case_acc": 80.25}))
    table = study.extra_table(tmp_path, ["new", "old"], ["beta50=--attack beta --steps 50"])
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| new")
            or line.startswith("| old")}
    assert rows["new"] == "| new | 98.50 | beta-50 91.50, worst_case 91.50 |"
    assert rows["old"] == "| old | 97.50 | beta-50 80.25, worst_case 80.25 |"


def test_seed_means_average_each_variant_over_its_seeds_only():
    study = load_script()
    rows = {"pgd_seed0": [{"clean_acc": 0.9, "pgd_acc": 0.5}], "pgd_seed1": [{"clean_acc": 0.8, "pgd_acc": 0.4}],
            "hr_seed0": [{"clean_acc": 0.7, "pgd_acc": 0.6}]}
    means = study.seed_means(rows)
    assert list(means) == ["pgd (mean of 2 seeds)"]  # one seed: no mean row
    assert means["pgd (mean of 2 seeds)"][0]["clean_acc"] == pytest.approx(0.85)
    assert means["pgd (mean of 2 seeds)"][0]["pgd_acc"] == pytest.approx(0.45)


def test_holistic_noise_is_reproducible_and_stays_in_the_box():
    spec = importlib.util.spec_from_file_location("holistic_eval", ROOT / "scripts" / "holistic_eval.py")
    holistic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(holistic)
    x = torch.rand(4, 1, 8, 8)
    a, b, c = holistic.noisy(x, 0.3, seed=0), holistic.noisy(x, 0.3, seed=0), holistic.noisy(x, 0.3, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    inside = (a > 0) & (a < 1)  # where no clipping happened the noise has the asked standard deviation
    assert (a - x)[inside].std().item() == pytest.approx(0.3, rel=0.25)
