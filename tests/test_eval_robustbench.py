"""``robustrain eval --model robustbench:NAME``: a RobustBench zoo model loaded by the robustbench package itself
(``robustbench.utils.load_model``) from a local model folder, and its result under RobustBench's field names; the
ε sweep (``--eps a,b,c``): one report per radius, the table (JSON + markdown) and the plot.

Downloads fail here, so the zoo entry is a small architecture registered for the test and its checkpoint is written
in robustbench's layout (``MODEL_DIR/cifar10/Linf/NAME.pt`` holding ``{"state_dict": ...}`` with DataParallel's
``module.`` prefixes, as the zoo's files do); the CIFAR-10 test file is written in the official binary layout.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robustrain.cli import main

NAME = "Robustrain2026Tiny"


def tiny_model():
    from robustrain.models import create_model

    torch.manual_seed(0)
    return create_model("small_cnn", num_classes=10, in_channels=3, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                        input_size=32, width=4, hidden=16)


@pytest.fixture()
def zoo(tmp_path, monkeypatch):
    from robustrain.cli.target import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    monkeypatch.setitem(model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf], NAME,
                        {"model": tiny_model, "gdrive_id": "local-only"})
    model = tiny_model()
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, folder / f"{NAME}.pt")
    rng = np.random.default_rng(0)  # 40 CIFAR-10-shaped test images in the official binary layout
    rows = np.concatenate([rng.integers(0, 10, (40, 1)), rng.integers(0, 256, (40, 3072))], axis=1).astype(np.uint8)
    (tmp_path / "data" / "cifar-10-batches-bin").mkdir(parents=True)
    rows.tofile(tmp_path / "data" / "cifar-10-batches-bin" / "test_batch.bin")
    monkeypatch.chdir(tmp_path)
    return model


COMMON = ["eval", "--dataset", "cifar10", "--data-root", "data", "--n-ex", "20", "--batch-size", "10",
          "--aa-steps", "3", "--square-queries", "10", "--no-progress"]


def test_robustbench_model_is_loaded_by_robustbench_and_reported_by_its_names(zoo, capsys):
    code = main([*COMMON, "--model", f"robustbench:{NAME}", "--model-dir", "models", "--eps", "8/255",
                 "--attack", "autoattack", "--out", "out"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(open("out/report.json").read())
    assert report["model"]["source"] == "robustbench" and report["model"]["threat_model"] == "Linf"
    from robustrain.evaluation.report import model_sha256

    assert report["model"]["sha256"] == model_sha256(zoo)  # the weights the file holds, through robustbench
    rb = json.loads(open("out/robustbench.json").read())
    assert rb["name"] == NAME and rb["dataset"] == "cifar10" and rb["threat_model"] == "Linf"
    assert rb["eps"] == "8/255" and rb["eps_value"] == pytest.approx(8 / 255)
    assert rb["clean_acc"] == report["accuracy"]["clean"] and rb["autoattack_acc"] == report["accuracy"]["autoattack"]
    assert rb["autoattack_version"] == "standard" and rb["standard"] is False  # 3 steps is not the standard


def test_robustbench_errors_say_what_to_do(zoo, capsys):
    assert main([*COMMON, "--model", "robustbench:Robustrain2026Tiyn", "--model-dir", "models", "--eps", "8/255"]) == 2
    assert f"Did you mean '{NAME}'" in capsys.readouterr().err
    assert main([*COMMON, "--model", "robustbench:Standard", "--model-dir", "models", "--eps", "8/255"]) == 2
    err = capsys.readouterr().err
    assert "models/cifar10/Linf/Standard.pt" in err and "internet" in err
    assert main([*COMMON, "--model", f"robustbench:{NAME}", "--norm", "l1", "--eps", "8/255"]) == 2
    assert "L∞ and L2 models only" in capsys.readouterr().err


def test_eps_sweep_writes_a_report_per_radius_a_table_and_a_plot(zoo, capsys):
    code = main([*COMMON, "--model", f"robustbench:{NAME}", "--model-dir", "models", "--attack", "apgd-ce,square",
                 "--norm", "linf", "--eps", "2/255,4/255,8/255", "--out", "sweep"])
    assert code == 0, capsys.readouterr().err
    sweep = json.loads(open("sweep/sweep.json").read())
    assert [r["eps_label"] for r in sweep["rows"]] == ["2/255", "4/255", "8/255"]
    for r, path in zip(sweep["rows"], sweep["reports"]):
        report = json.loads(open(path).read())
        assert report["threat"]["eps"] == pytest.approx(r["eps"])
        assert r["apgd-ce_acc"] == report["accuracy"]["apgd-ce"] and r["square_acc"] == report["accuracy"]["square"]
        assert r["clean_acc"] == sweep["rows"][0]["clean_acc"]  # the same examples at every radius
    worst = [r["worst_case_acc"] for r in sweep["rows"]]
    assert worst == sorted(worst, reverse=True)  # a larger ball breaks at least as much (same seeds)
    md = open("sweep/sweep.md").read()
    assert "| 8/255 |" in md and f"{100 * sweep['rows'][2]['apgd-ce_acc']:.2f}" in md
    from PIL import Image

    assert Image.open("sweep/sweep.png").size[0] > 300
    out = capsys.readouterr().out
    assert "accuracy (%) against ε (linf)" in out and "2/255" in out
    assert main([*COMMON, "--model", f"robustbench:{NAME}", "--model-dir", "models", "--eps", "2/255,2/255"]) == 2
