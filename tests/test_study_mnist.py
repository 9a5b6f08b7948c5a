"""scripts/study_mnist.py's table of further evaluations: eval.json holds fractions (units key), an old file
percent; the table shows percent either way (the bug: fractions printed as 1.0 / 0.9)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
