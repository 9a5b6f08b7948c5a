"""The bad-input matrix (issue 16): what a careful user can get wrong, tried one case at a time.

Every case runs in a fresh workspace holding a real run folder (a tiny digits run trained once per module), a
recipe and data files. It must end in a clear error: exit code 2 from the CLI (an exception of robustrain's error
types from the API), a message naming what was received and how to fix it (the case's ``needles``), no traceback,
and the workspace unchanged byte for byte (no stub folder, nothing already written touched). A case that raises
anything else, prints a traceback or exits 0 fails: the matrix has no tracebacks and no silent acceptances.

Count the cases, and check both figures, with:
    python -m pytest tests/test_bad_inputs.py -q -k matrix     (each case is one test; "N passed" = N clear errors)
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from robustrain.cli.main import main
from robustrain.errors import RobustrainError

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
TINY = ["train.progress=false", "train.epochs=1", "data.train_subset=64", "data.val_size=50", "eval.n_ex=50",
        "eval.attack={name: pgd, steps: 2, restarts: 1}", "validation.attack={name: pgd, steps: 2, restarts: 1}",
        "wandb.mode=disabled"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_CUDA = torch.cuda.is_available()


def sets(*overrides: str) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


# -- the workspace ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real run folder: one epoch of FGSM-RS on 64 digits (best.pt, last.pt, metrics.jsonl, summary.json)."""
    run = tmp_path_factory.mktemp("matrix") / "run"
    assert main(["train", "-c", str(QUICK), "--run-dir", str(run), *sets(*TINY)]) == 0
    return run


@pytest.fixture()
def ws(trained_run, tmp_path, monkeypatch) -> Path:
    """The case's workspace (the current folder): run/ (a copy of the trained run), recipe.yaml, cifar/ with
    CIFAR-10-sized fake binary files, weights.pt (a bare state dict of the run's model)."""
    shutil.copytree(trained_run, tmp_path / "run")
    (tmp_path / "recipe.yaml").write_text(QUICK.read_text())
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    torch.save(ckpt["model"], tmp_path / "weights.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tree_hash(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (the lock file aside, which a released lock removes anyway)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.name == ".robustrain.lock":
            continue
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "other"
    return out


# -- cases --------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    run: Callable[[Path], Any]   # CLI: returns main()'s exit code; API: raises
    needles: tuple[str, ...]     # must appear in the message (the value received, the fix)
    api: bool = False            # an API call: must raise a RobustrainError (or the named type)
    raises: tuple[type, ...] = (RobustrainError,)
    setup: Callable[[Path], None] | None = None
    skip: str | None = None
    marks: tuple = field(default_factory=tuple)


CASES: list[Case] = []


def case(id: str, run, *needles: str, **kw) -> None:
    CASES.append(Case(id, run, tuple(needles), **kw))


def train(*overrides: str, config: str = "recipe.yaml", run_dir: str = "new_run", extra: tuple[str, ...] = ()):
    return lambda ws: main(["train", "-c", config, "--run-dir", run_dir, *sets(*TINY, *overrides), *extra])


def evaluate(*args: str):
    return lambda ws: main(["eval", *args, "--no-progress"])


# config keys and values (each fails while the recipe is loaded or the run is built, before anything is written)
CONFIG = [
    ("unknown_top_key", "epochz=3", ("'epochz'", "valid keys")),
    ("unknown_nested_key", "train.epoch=3", ("'train.epoch'", "did you mean 'train.epochs'")),
    ("unknown_section", "trian.epochs=3", ("'trian'", "train")),
    ("epochs_zero", "train.epochs=0", ("train.epochs", "got 0")),
    ("epochs_negative", "train.epochs=-2", ("train.epochs", "-2")),
    ("epochs_float", "train.epochs=2.5", ("train.epochs", "2.5", "integer")),
    ("epochs_string", "train.epochs=many", ("train.epochs", "'many'", "integer")),
    ("batch_size_zero", "data.batch_size=0", ("data.batch_size", ">= 1")),
    ("eval_batch_size_zero", "data.eval_batch_size=0", ("data.eval_batch_size", ">= 1")),
    ("val_size_negative", "data.val_size=-1", ("data.val_size = -1", ">= 0")),
    ("val_size_too_large", "data.val_size=100000", ("100000", "val_size must be in")),
    ("val_size_string", "data.val_size=lots", ("data.val_size", "'lots'")),
    ("select_on_typo", "validation.select_on=val_robus_acc", ("'val_robus_acc'", "did you mean 'val_robust_acc'")),
    ("select_on_fgsm_without_fgsm", ("validation.select_on=val_fgsm_acc", "validation.fgsm=false"),
     ("'val_fgsm_acc'", "validation.fgsm: true")),
    ("train_subset_zero", "data.train_subset=0", ("data.train_subset = 0", ">= 1")),
    ("train_subset_too_large", "data.train_subset=99999", ("99999", "train_subset")),
    ("eval_n_ex_zero", "eval.n_ex=0", ("eval.n_ex = 0", ">= 1")),
    ("eval_n_ex_negative", "eval.n_ex=-5", ("eval.n_ex = -5", ">= 1")),
    ("eval_batch_zero", "eval.batch_size=0", ("eval.batch_size = 0", ">= 1")),
    ("grad_clip_negative", "train.grad_clip=-1", ("train.grad_clip = -1.0", "ascend")),
    ("grad_clip_zero", "train.grad_clip=0", ("train.grad_clip = 0.0", "null")),
    ("grad_clip_inf", "train.grad_clip=.inf", ("train.grad_clip = inf", "finite")),
    ("label_smoothing_one", "train.label_smoothing=1", ("train.label_smoothing = 1.0", "[0, 1)")),
    ("label_smoothing_negative", "train.label_smoothing=-0.1", ("train.label_smoothing = -0.1", "[0, 1)")),
    ("eps_warmup_negative", "train.eps_warmup_epochs=-1", ("train.eps_warmup_epochs = -1.0", ">= 0")),
    ("checkpoint_every_negative", "train.checkpoint_every=-1", ("train.checkpoint_every = -1", ">= 0")),
    ("log_every_zero", "train.log_every=0", ("train.log_every = 0", ">= 1")),
    ("amp_fp16", "train.amp=fp16", ("'fp16'", "bf16")),
    ("lr_zero", "optim.lr=0", ("optim.lr = 0.0", "> 0")),
    ("lr_negative", "optim.lr=-0.1", ("optim.lr = -0.1", "> 0")),
    ("lr_nan", "optim.lr=.nan", ("optim.lr = nan", "finite")),
    ("lr_string", "optim.lr=fast", ("optim.lr", "'fast'", "8/255")),
    ("momentum_negative", "optim.momentum=-1", ("optim.momentum = -1.0", "[0, 1)")),
    ("momentum_one", "optim.momentum=1", ("optim.momentum = 1.0", "[0, 1)")),
    ("weight_decay_negative", "optim.weight_decay=-5e-4", ("optim.weight_decay = -0.0005", ">= 0")),
    ("betas_one_value", ("optim.name=adam", "optim.betas=[0.9]"), ("optim.betas = [0.9]", "0.999")),
    ("betas_three_values", ("optim.name=adam", "optim.betas=[0.9, 0.99, 0.999]"), ("[0.9, 0.99, 0.999]", "two numbers")),
    ("betas_above_one", ("optim.name=adam", "optim.betas=[0.9, 1.5]"), ("[0.9, 1.5]", "[0, 1)")),
    ("betas_not_list", ("optim.name=adam", "optim.betas=0.9"), ("optim.betas", "0.9", "list")),
    ("nesterov_without_momentum", ("optim.nesterov=true", "optim.momentum=0", "schedule.cycle_momentum=false"),
     ("optim.nesterov", "optim.momentum=0.9")),
    ("optimizer_unknown", "optim.name=sgdd", ("'sgdd'", "did you mean 'sgd'")),
    ("schedule_unknown", "schedule.name=cyclik", ("cyclik", "cyclic")),
    ("schedule_peak_above_one", "schedule.peak=1.5", ("1.5", "peak")),
    ("seed_negative", "seed=-1", ("seed = -1", "[0, 2**63)")),
    ("seed_string", "seed=abc", ("seed", "'abc'", "integer")),
    ("name_empty", "name=''", ("name = ''", "non-empty")),
    ("name_with_slash", "name=a/b", ("name = 'a/b'", "without '/'")),
    ("device_typo", "data.device=gpu", ("'gpu'", "cpu, cuda")),
    ("device_index_garbage", "data.device=cuda:x", ("'cuda:x'", "cuda:N")),
    ("device_number", "data.device=3", ("data.device", "3")),
    ("dataset_unknown", "data.name=cifar11", ("'cifar11'", "cifar10")),
    ("dataset_without_root", "data.name=cifar10", ("'cifar10'", "data root")),
    ("augment_unknown", "data.augment=flipp", ("'flipp'", "crop_flip")),
    ("model_unknown", "model.name=resnet9000", ("'resnet9000'", "expected one of")),
    ("model_kwarg_unknown", "model.kwargs={depthh: 3}", ("'depthh'", "valid keys")),
    ("model_input_size_mismatch", "model.kwargs={input_size: 28}", ("(1, 8, 8)", "input_size: 8")),
    ("model_kwargs_not_mapping", "model.kwargs=[1, 2]", ("model.kwargs", "[1, 2]", "mapping")),
    ("threat_norm_unknown", "threat.norm=linfinity", ("'linfinity'", "linf, l2")),
    ("threat_eps_pixels", "threat.eps=8", ("threat.eps", "8", "/255")),
    ("threat_eps_negative", "threat.eps=-0.1", ("threat.eps", "-0.1")),
    ("threat_eps_division_by_zero", "threat.eps=8/0", ("threat.eps", "'8/0'")),
    ("threat_eps_code", "threat.eps=__import__('os').getcwd()", ("threat.eps", "__import__")),
    ("attack_unknown", "attack.name=pgdd", ("'pgdd'", "Did you mean 'pgd'")),
    ("attack_option_unknown", "attack.stepz=2", ("attack.stepz", "Valid keys")),
    ("attack_not_mapping", "attack=pgd", ("attack", "'pgd'", "mapping")),
    ("attack_step_pixels", "attack.step=2", ("attack.step", "/255")),
    ("validation_attack_unknown", "validation.attack.name=fgsmm", ("'fgsmm'", "fgsm")),
    ("validation_attack_no_clip", "validation.attack={name: fgsm_rs, clip: false}", ("validation.attack.clip", "remove")),
    ("eval_attack_unknown", "eval.attack.name=autoatack", ("'autoatack'", "expected one of")),
    ("eval_attack_update_bn", "eval.attack.update_bn_stats=true", ("eval.attack.update_bn_stats", "remove")),
    ("objective_unknown", "objective.name=tradez", ("'tradez'", "trades")),
    ("regularisers_not_list", "regularisers=gradalign", ("regularisers", "'gradalign'", "list")),
    ("regulariser_unknown", "regularisers=[{name: gradalignn}]", ("'gradalignn'", "gradalign")),
    ("regulariser_option_unknown", "regularisers=[{name: gradalign, lambdaa: 1}]", ("lambdaa", "did you mean")),
    ("weight_perturbation_unknown", "weight_perturbation={name: awpp}", ("'awpp'", "awp")),
    ("procedure_unknown", "procedures=[nosuchproc]", ("'nosuchproc'", "expected one of")),
    ("behaviour_without_switch", "attack.behaviour=code", ("behaviour", "remove the key")),
    ("monitor_action_unknown", "monitor.action=warnn", ("'warnn'", "warn")),
    ("monitor_without_val", ("monitor.enabled=true", "data.val_size=0"), ("monitor.enabled", "data.val_size")),
    ("monitor_false_alarm_one", "monitor.false_alarm=1", ("monitor.false_alarm", "(0, 1)")),
    ("monitor_n_check_zero", "monitor.n_check=0", ("monitor.n_check = 0", ">= 1")),
    ("monitor_every_zero", "monitor.every=0", ("monitor.every = 0", ">= 1")),
    ("monitor_rollback_without_remedy", "monitor.action=rollback", ("rollback", "monitor.remedy")),
    ("monitor_remedy_kind_unknown", "monitor.remedy={kind: lrr}", ("'lrr'", "lr")),
    ("wandb_mode_unknown", "wandb.mode=offlline", ("'offlline'", "offline")),
    ("wandb_tags_not_strings", "wandb.tags=[1, 2]", ("wandb.tags", "[1, 2]", "strings")),
    ("bool_as_string", "train.progress=yes please", ("train.progress", "'yes please'", "true or false")),
    ("override_without_equals", "train.epochs", ("'train.epochs'", "key.subkey=value")),
    ("override_bad_yaml", "train.epochs=[1, 2", ("'train.epochs=[1, 2'", "not valid YAML")),
    ("override_defaults", "defaults=[x.yaml]", ("defaults", "recipe")),
]
for cid, over, needles in CONFIG:
    overs = over if isinstance(over, tuple) else (over,)
    case(f"config-{cid}", train(*overs), *needles)


# config files
def _write(name: str, text: str | bytes):
    def setup(ws: Path) -> None:
        (ws / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


case("file-config_missing", train(config="nope.yaml"), "'nope.yaml'", "robustrain recipes")
case("file-config_empty", train(config="empty.yaml"), "'empty.yaml'", "is empty", "quickstart_digits.yaml",
     setup=_write("empty.yaml", ""))
case("file-config_only_comments", train(config="c.yaml"), "'c.yaml'", "is empty", setup=_write("c.yaml", "# nothing\n"))
case("file-config_a_list", train(config="l.yaml"), "'l.yaml'", "mapping", setup=_write("l.yaml", "- a\n- b\n"))
case("file-config_bad_yaml", train(config="b.yaml"), "'b.yaml'", "not valid YAML", setup=_write("b.yaml", "a: [1\n"))
case("file-config_binary", train(config="bin.yaml"), "'bin.yaml'", "not a text file",
     setup=_write("bin.yaml", b"\xff\xfe\x00\x81binary"))
case("file-config_is_folder", train(config="run"), "'run'", "does not exist")
case("file-defaults_missing", train(config="d.yaml"), "'base.yaml'", "does not exist",
     setup=_write("d.yaml", "defaults: [base.yaml]\nname: x\n"))
case("file-defaults_cycle", train(config="cyc.yaml"), "cycle", "cyc.yaml",
     setup=_write("cyc.yaml", "defaults: [cyc.yaml]\n"))
case("file-defaults_not_list", train(config="dn.yaml"), "defaults must be a list", "{'a': 1}",
     setup=_write("dn.yaml", "defaults: {a: 1}\n"))
case("file-config_unknown_key_in_file", train(config="k.yaml"), "'trainn'", "train",
     setup=_write("k.yaml", QUICK.read_text() + "trainn: {epochs: 1}\n"))

# the train command and run folders
case("run-dir_is_a_file", train(run_dir="afile"), "'afile'", "is a file", setup=_write("afile", "x"))
case("run-folder_has_checkpoints", train(run_dir="run"), "already holds checkpoints", "--resume")
case("run-resume_missing_folder", train(run_dir="nowhere", extra=("--resume",)), "nowhere", "start the run without --resume")
case("run-resume_without_last", train(run_dir="empty_run", extra=("--resume",)), "last.pt", "does not exist",
     setup=lambda ws: (ws / "empty_run").mkdir())
case("run-resume_changed_eps", train("threat.eps=0.3", run_dir="run", extra=("--resume",)), "threat.eps: 0.1 -> 0.3",
     "start a new run folder")
case("run-resume_changed_attack", train("attack.name=pgd", run_dir="run", extra=("--resume",)), "attack.name",
     "'fgsm_rs' -> 'pgd'")
case("run-resume_changed_seed", train("seed=1", run_dir="run", extra=("--resume",)), "seed: 0 -> 1", "--resume")
case("run-resume_fewer_epochs", train("train.epochs=0", run_dir="run", extra=("--resume",)), "train.epochs", ">= 1")


def _damage(name: str, how: str):
    def setup(ws: Path) -> None:
        p = ws / "run" / name
        data = p.read_bytes()
        if how == "truncate":
            p.write_bytes(data[: len(data) // 3])
        elif how == "garbage":
            p.write_bytes(b"this is not a checkpoint")
        elif how == "empty":
            p.write_bytes(b"")
    return setup


class _Keep:
    """Returned by an edit that changed the checkpoint in place."""


def _pop(*keys: str):
    def edit(c: dict) -> _Keep:
        node = c
        for k in keys[:-1]:
            node = node[k]
        node.pop(keys[-1])
        return _Keep()
    return edit


def _resave(name: str, edit: Callable[[dict], Any]):
    def setup(ws: Path) -> None:
        p = ws / "run" / name
        ckpt = torch.load(p, weights_only=True)
        out = edit(ckpt)
        torch.save(ckpt if isinstance(out, _Keep) else out, p)
    return setup


resume = train(run_dir="run", extra=("--resume",))
case("ckpt-resume_truncated", resume, "'run/last.pt'", "damaged", setup=_damage("last.pt", "truncate"))
case("ckpt-resume_garbage", resume, "'run/last.pt'", "damaged", setup=_damage("last.pt", "garbage"))
case("ckpt-resume_empty_file", resume, "'run/last.pt'", "damaged", setup=_damage("last.pt", "empty"))
case("ckpt-resume_without_optimizer", resume, "lacks optimizer", "robustrain eval",
     setup=_resave("last.pt", _pop("optimizer")))
case("ckpt-resume_without_rng", resume, "lacks rng", "RNG states", setup=_resave("last.pt", _pop("rng")))
case("ckpt-resume_without_progress", resume, "trainer.step", "progress",
     setup=_resave("last.pt", _pop("trainer", "step")))
case("ckpt-resume_weights_only", resume, "model", "not a robustrain checkpoint",
     setup=_resave("last.pt", lambda c: c["model"]))
case("ckpt-resume_a_list", resume, "holds list", "not a robustrain checkpoint", setup=_resave("last.pt", lambda c: [1, 2]))
case("ckpt-resume_other_version", resume, "format version 999", "reads version",
     setup=_resave("last.pt", lambda c: c.update(version=999) or _Keep()))
case("ckpt-eval_truncated", evaluate("run"), "'run/best.pt'", "damaged", setup=_damage("best.pt", "truncate"))
case("ckpt-eval_without_config", evaluate("run"), "has no config", "--model module:factory",
     setup=_resave("best.pt", _pop("config")))
case("ckpt-eval_missing_last", evaluate("run", "--checkpoint", "last"), "'run/last.pt'", "does not exist",
     setup=lambda ws: (ws / "run" / "last.pt").unlink())
case("ckpt-eval_file_missing", evaluate("nothing.pt"), "'nothing.pt'", "does not exist")
case("ckpt-eval_wrong_architecture", evaluate("run"), "does not fit", "model",
     setup=_resave("best.pt", lambda c: c["config"]["model"]["kwargs"].update(width=4) or _Keep()))

# eval's options
EVAL = [
    ("batch_size_zero", ("run", "--batch-size", "0"), ("--batch-size 0", ">= 1")),
    ("batch_size_negative", ("run", "--batch-size", "-3"), ("--batch-size -3", ">= 1")),
    ("n_ex_zero", ("run", "--n-ex", "0"), ("--n-ex 0", ">= 1")),
    ("n_ex_negative", ("run", "--n-ex", "-5"), ("--n-ex -5", ">= 1")),
    ("n_ex_too_many", ("run", "--n-ex", "99999", "--attack", "pgd"), ("--n-ex 99999", "expected 1..")),
    ("steps_zero", ("run", "--steps", "0"), ("--steps 0", ">= 1")),
    ("restarts_zero", ("run", "--restarts", "0"), ("--restarts 0", ">= 1")),
    ("aa_steps_zero", ("run", "--aa-steps", "0"), ("--aa-steps 0", ">= 1")),
    ("square_queries_negative", ("run", "--square-queries", "-1"), ("--square-queries -1", ">= 1")),
    ("seed_negative", ("run", "--seed", "-1"), ("--seed -1", ">= 0")),
    ("device_typo", ("run", "--device", "gpu"), ("'gpu'", "cpu, cuda")),
    ("device_garbage", ("run", "--device", "cuda:zero"), ("'cuda:zero'", "cuda:N")),
    ("eps_pixels", ("run", "--eps", "8"), ("--eps = 8", "8/255")),
    ("eps_text", ("run", "--eps", "small"), ("--eps", "'small'", "8/255")),
    ("eps_negative", ("run", "--eps", "-0.1"), ("--eps must be", ">= 0, got -0.1")),
    ("step_pixels", ("run", "--attack", "pgd", "--step", "2"), ("--attack.step", "/255")),
    ("step_text", ("run", "--attack", "pgd", "--step", "tiny"), ("step", "'tiny'")),
    ("attack_unknown", ("run", "--attack", "pgdd"), ("'pgdd'", "pgd")),
    ("attack_empty", ("run", "--attack", ","), ("--attack ','", "pgd,autoattack")),
    ("target_and_model", ("run", "--model", "m:f"), ("'run'", "give one of them")),
    ("no_target", (), ("give a run folder", "--model module:factory")),
    ("target_missing", ("no_such_run",), ("'no_such_run'", "does not exist")),
    ("data_root_wrong", ("run", "--data-root", "nowhere"), ()),  # digits needs no root: see the note below
    ("model_without_eps", ("--model", "m:f"), ("--model needs --eps", "8/255")),
    ("model_spec_without_colon", ("--model", "justamodule", "--eps", "0.1", "--dataset", "digits"),
     ("'justamodule'", "mypkg.models:build_model")),
    ("model_module_missing", ("--model", "no_such_mod:f", "--eps", "0.1", "--dataset", "digits"),
     ("'no_such_mod'", "run from the folder")),
    ("model_attribute_missing", ("--model", "facts:nothing", "--eps", "0.1", "--dataset", "digits"),
     ("'nothing'", "has no attribute")),
    ("model_not_callable", ("--model", "facts:NUMBER", "--eps", "0.1", "--dataset", "digits"),
     ("'NUMBER'", "not callable")),
    ("model_factory_raises", ("--model", "facts:broken", "--eps", "0.1", "--dataset", "digits"),
     ("facts:broken", "RuntimeError: no GPU here", "facts.py", "fix it")),
    ("model_factory_needs_args", ("--model", "facts:needs_args", "--eps", "0.1", "--dataset", "digits"),
     ("TypeError", "without arguments")),
    ("model_returns_non_module", ("--model", "facts:not_a_model", "--eps", "0.1", "--dataset", "digits"),
     ("returned str", "torch.nn.Module")),
    ("model_import_raises", ("--model", "explodes:f", "--eps", "0.1", "--dataset", "digits"),
     ("importing 'explodes'", "ZeroDivisionError", "fix the module")),
    ("model_wrong_outputs", ("--model", "facts:three_classes", "--eps", "0.1", "--dataset", "digits"),
     ("(2, 3)", "(batch, 10)")),
    ("model_forward_fails", ("--model", "facts:for_28px", "--eps", "0.1", "--dataset", "digits"),
     ("fails on digits images", "Is it a model for digits")),
    ("model_weights_missing", ("--model", "facts:digits_cnn", "--weights", "none.pt", "--eps", "0.1", "--dataset",
                               "digits"), ("'none.pt'", "does not exist")),
    ("model_weights_garbage", ("--model", "facts:digits_cnn", "--weights", "recipe.yaml", "--eps", "0.1", "--dataset",
                               "digits"), ("'recipe.yaml'", "weights_only=True")),
    ("model_weights_not_state_dict", ("--model", "facts:digits_cnn", "--weights", "list.pt", "--eps", "0.1",
                                      "--dataset", "digits"), ("'list.pt'", "not a state dict")),
    ("model_weights_do_not_fit", ("--model", "facts:wide_cnn", "--weights", "weights.pt", "--eps", "0.1", "--dataset",
                                  "digits"), ("'weights.pt'", "do not fit")),
    ("model_split_val", ("--model", "facts:digits_cnn", "--eps", "0.1", "--dataset", "digits", "--split", "val"),
     ("--split val", "--split test")),
    ("model_dataset_unknown", ("--model", "facts:digits_cnn", "--eps", "0.1", "--dataset", "digitz"),
     ("'digitz'", "digits")),
    ("out_is_a_file", ("run", "--attack", "pgd", "--steps", "1", "--n-ex", "5", "--out", "afile"),
     ("'afile'", "is a file")),
    ("data_option_without_value", ("--model", "facts:digits_cnn", "--eps", "0.1", "--dataset", "digits",
                                   "--data-option", "num_classes"), ("--data-option 'num_classes'", "KEY=VALUE")),
    ("data_option_bad_yaml", ("--model", "facts:digits_cnn", "--eps", "0.1", "--dataset", "digits",
                              "--data-option", "num_classes=[10"), ("--data-option 'num_classes=[10'", "not valid YAML",
                                                                    "quote it")),
    ("data_option_unknown", ("--model", "facts:digits_cnn", "--eps", "0.1", "--dataset", "npz", "--data-root",
                             "npzdata", "--data-option", "num_class=10"),
     ("'data.options.num_class'", "did you mean 'data.options.num_classes'")),
    ("data_option_unknown_for_the_run", ("run", "--data-option", "num_classes=10"),
     ("'data.options.num_classes'", "dataset 'digits'", "Valid keys")),
]
FACTS = '''import torch
from torch import nn
NUMBER = 3
def broken():
    raise RuntimeError("no GPU here")
def needs_args(width):
    return nn.Linear(width, 10)
def not_a_model():
    return "model"
def three_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
def for_28px():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
def digits_cnn():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
def wide_cnn():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
'''


def _eval_setup(ws: Path) -> None:
    (ws / "facts.py").write_text(FACTS)
    (ws / "explodes.py").write_text("1 / 0\n")
    (ws / "afile").write_text("x")
    torch.save([1, 2, 3], ws / "list.pt")
    (ws / "npzdata").mkdir()
    np.savez(ws / "npzdata" / "test.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.arange(4))
    sys.modules.pop("facts", None)
    sys.modules.pop("explodes", None)


for cid, args, needles in EVAL:
    if cid == "data_root_wrong":
        continue  # digits ships with scikit-learn: a data root is not used, so this is no error
    case(f"eval-{cid}", evaluate(*args), *needles, setup=_eval_setup)
case("eval-cuda_without_gpu", evaluate("run", "--device", "cuda"), "'cuda'", "no CUDA", "--device=cpu",
     skip="this machine has a GPU" if HAS_CUDA else None)
case("config-cuda_without_gpu", train("data.device=cuda"), "'cuda'", "no CUDA", "data.device=cpu",
     skip="this machine has a GPU" if HAS_CUDA else None)
case("config-cuda_index_missing", train("data.device=cuda:7"), "'cuda:7'", "CUDA")

# locations that cannot be written (as root, permissions cannot make a folder read-only: these can't be written
# by anyone)
case("run-dir_under_a_file", train(run_dir="afile/run"), "'afile/run'", "choose a writable location",
     setup=_write("afile", "x"))
case("run-dir_in_proc", train(run_dir="/proc/robustrain_run"), "'/proc/robustrain_run'", "writable",
     skip=None if Path("/proc/self").exists() else "no /proc")
case("eval-out_under_a_file", evaluate("run", "--attack", "pgd", "--steps", "1", "--n-ex", "5", "--out", "afile/ev"),
     "'afile/ev'", "writable", setup=_write("afile", "x"))
case("report-out_under_a_file", lambda ws: main(["report", "run", "--out", "afile/rep"]), "'afile/rep'", "writable",
     setup=_write("afile", "x"))

# report
case("report-missing_folder", lambda ws: main(["report", "nowhere"]), "'nowhere'", "not a run folder")
case("report-no_metrics", lambda ws: main(["report", "plain"]), "'plain'", "no metrics.jsonl",
     setup=lambda ws: (ws / "plain").mkdir())
case("report-several_without_out", lambda ws: main(["report", "run", "run"]), "several run folders", "--out DIR")
case("report-damaged_metrics_line", lambda ws: main(["report", "run", "--out", "rep"]), "line 1", "restore it",
     setup=lambda ws: (ws / "run" / "metrics.jsonl").write_text(
         "{broken\n" + (ws / "run" / "metrics.jsonl").read_text()))
case("report-out_is_a_file", lambda ws: main(["report", "run", "--out", "afile"]), "'afile'", "is a file",
     setup=_write("afile", "x"))


# argparse: exit code 2 and a usage message
def argparse_exit(*argv: str):
    def run(ws: Path) -> int:
        try:
            return main(list(argv))
        except SystemExit as e:
            return e.code
    return run


case("cli-no_command", argparse_exit(), "required", "usage")
case("cli-unknown_command", argparse_exit("trian"), "'trian'", "choose from")
case("cli-train_without_config", argparse_exit("train"), "-c/--config", "required")
case("cli-eval_checkpoint_choice", argparse_exit("eval", "run", "--checkpoint", "middle"), "'middle'", "best")
case("cli-eval_split_choice", argparse_exit("eval", "run", "--split", "training"), "'training'", "test")
case("cli-eval_steps_not_int", argparse_exit("eval", "run", "--steps", "ten"), "'ten'", "int")
case("cli-eval_norm_choice", argparse_exit("eval", "run", "--norm", "l3"), "'l3'", "linf")
case("cli-eval_version_choice", argparse_exit("eval", "run", "--version", "fast"), "'fast'", "standard")
case("cli-unknown_option", argparse_exit("train", "-c", "recipe.yaml", "--epochs", "3"), "--epochs", "usage")


# data files (through the API that the commands call)
def load(name: str, root: str, split: str = "test"):
    def run(ws: Path) -> None:
        from robustrain.data import load_dataset

        load_dataset(name, ws / root, split)
    return run


def _cifar(n_records: int | None = None, size: int | None = None, name: str = "test_batch.bin"):
    def setup(ws: Path) -> None:
        folder = ws / "cifar" / "cifar-10-batches-bin"
        folder.mkdir(parents=True)
        n = 10_000 if n_records is None else n_records
        data = bytearray(torch.randint(0, 10, (n, 1), dtype=torch.uint8).repeat(1, 3073).flatten().numpy().tobytes())
        for i in range(0, len(data), 3073):
            data[i] %= 10  # labels 0..9
        (folder / name).write_bytes(bytes(data if size is None else data[:size]))
    return setup


case("data-cifar_size_not_a_record_multiple", load("cifar10", "cifar"), "test_batch.bin", "size 5000 bytes",
     "3073-byte record", api=True, setup=_cifar(2, size=5000))
case("data-cifar_empty_file", load("cifar10", "cifar"), "test_batch.bin", "size 0 bytes", api=True, setup=_cifar(0))
case("data-cifar_missing_test_file", load("cifar10", "cifar"), "test_batch", "data.root", api=True,
     setup=_cifar(10, name="data_batch_1.bin"))
case("data-cifar_root_missing", load("cifar10", "no_data"), "no_data", "download", api=True)
case("data-cifar_root_is_a_file", load("cifar10", "afile"), "afile", "point data.root", api=True,
     setup=_write("afile", "x"))
case("data-dataset_unknown", load("imagenett", "cifar"), "'imagenett'", "cifar10", api=True)


def _mnist(content: bytes):
    def setup(ws: Path) -> None:
        folder = ws / "mnist"
        folder.mkdir()
        for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            (folder / name).write_bytes(content)
    return setup


case("data-mnist_not_gzip", load("mnist", "mnist"), "t10k-images-idx3-ubyte.gz", "gzip", "get it again", api=True,
     setup=_mnist(b"not gzip at all"))
case("data-mnist_truncated", load("mnist", "mnist"), "idx header", "get it again", api=True,
     setup=_mnist(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20)))


# API calls
def api(fn: Callable[[Path], Any]):
    return fn


def _model():
    from conftest import make_digits_model

    return make_digits_model().eval()


def _x(value: float | None = None, n: int = 4):
    x = torch.rand(n, 1, 8, 8)
    if value is not None:
        x[0, 0, 0, 0] = value
    return x


def _eval_api(x, y, num_classes: int = 10):
    def run(ws: Path) -> None:
        from robustrain.evaluation.pipeline import EvalPlan, evaluate_robustness
        from robustrain.threat import make_threat

        plan = EvalPlan(make_threat("linf", 0.1), attacks=["clean", "pgd"],
                        sections={"pgd": {"name": "pgd", "steps": 1, "restarts": 1}}, batch_size=4)
        evaluate_robustness(_model(), x() if callable(x) else x, y, plan, num_classes=num_classes)
    return run


Y4 = torch.tensor([0, 1, 2, 3])
case("api-eval_nan_images", _eval_api(lambda: _x(float("nan")), Y4), "non-finite", "NaN", api=True)
case("api-eval_inf_images", _eval_api(lambda: _x(float("inf")), Y4), "inf", "[0,1]", api=True)
case("api-eval_images_0_255", _eval_api(lambda: _x() * 255, Y4), "[0,1]", "normalisation", api=True)
case("api-eval_no_examples", _eval_api(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), "no examples",
     "at least one", api=True)
case("api-eval_labels_out_of_range", _eval_api(_x, torch.tensor([0, 1, 2, 10])), "[0, 10)", "0..10", api=True)
case("api-eval_float_labels", _eval_api(_x, Y4.float()), "torch.float32", "y.long()", api=True)
case("api-eval_label_count", _eval_api(_x, torch.tensor([0, 1])), "(4, 1, 8, 8)", "(2,)", api=True)
case("api-eval_integer_images", _eval_api(lambda: (_x() * 255).to(torch.uint8), Y4), "torch.uint8", "[0,1]", api=True)


def _attack_api(x):
    def run(ws: Path) -> None:
        from robustrain.attacks import build_attack
        from robustrain.threat import make_threat

        build_attack("pgd", make_threat("linf", 0.1), steps=1)(_model(), x(), Y4)
    return run


case("api-attack_nan_images", _attack_api(lambda: _x(float("nan"))), "non-finite", "[0,1]", api=True,
     raises=(ValueError,))
case("api-attack_images_out_of_box", _attack_api(lambda: _x() + 1), "[0,1]", "inside the model", api=True,
     raises=(ValueError,))
case("api-attack_unknown", lambda ws: __import__("robustrain.attacks", fromlist=["x"]).build_attack(
    "pgdd", __import__("robustrain.threat", fromlist=["x"]).make_threat("linf", 0.1)), "'pgdd'", "pgd", api=True)
case("api-threat_bad_norm", lambda ws: __import__("robustrain.threat", fromlist=["x"]).make_threat("l3", 0.1),
     "'l3'", "linf", api=True)
case("api-threat_eps_nan", lambda ws: __import__("robustrain.threat", fromlist=["x"]).check_radius(
    float("nan"), "eps", "linf"), "eps must be a finite number", "nan", api=True)
case("api-model_unknown", lambda ws: __import__("robustrain.models", fromlist=["x"]).create_model(
    "resnet9000", num_classes=10), "'resnet9000'", "expected one of", api=True)
case("api-model_zero_classes", lambda ws: __import__("robustrain.models", fromlist=["x"]).create_model(
    "small_cnn", num_classes=0), "num_classes", "0", api=True)
case("api-split_validation_too_big", lambda ws: __import__("robustrain.data", fromlist=["x"]).split_validation(
    __import__("robustrain.data", fromlist=["x"]).load_dataset("digits", None, "train"), 10_000, seed=0),
    "10000", "val_size must be in", api=True)
case("api-load_config_bad_value", lambda ws: __import__("robustrain.config", fromlist=["x"]).load_config(
    QUICK, ["train.epochs=-1"]), "train.epochs", "-1", api=True)
case("api-dataset_float_images", lambda ws: __import__("robustrain.data", fromlist=["x"]).ArrayDataset(
    images=torch.rand(2, 1, 8, 8), labels=torch.tensor([0, 1]), num_classes=10, mean=(0.5,), std=(0.2,), name="x"),
    "uint8", "(x * 255)", api=True)
case("api-run_training_dir_is_file", lambda ws: __import__("robustrain.run", fromlist=["x"]).run_training(
    __import__("robustrain.config", fromlist=["x"]).load_config(QUICK, TINY), ws / "afile"), "'" , "is a file",
    api=True, setup=_write("afile", "x"))


def _loader():
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(_x(), Y4), batch_size=2)


# rt.train reads its data from the config; a DataLoader (or another object) is refused with the way to train on one
case("api-train_loader_as_keyword", lambda ws: __import__("robustrain").train(QUICK, *TINY, train_loader=_loader()),
     "rt.train: train_loader= is a DataLoader", "robustrain.training.Trainer", "data={'name'", api=True)
case("api-train_loader_positional", lambda ws: __import__("robustrain").train(QUICK, _loader()),
     "positional argument 2", "DataLoader", "not an override string", "robustrain.training.Trainer", api=True)
case("api-train_loader_as_config", lambda ws: __import__("robustrain").train(_loader()),
     "got DataLoader", "robustrain.training.Trainer", api=True)
case("api-train_tensor_as_value", lambda ws: __import__("robustrain").train(QUICK, *TINY, seed=torch.tensor(3)),
     "rt.train: seed= is a Tensor", "not a config value", api=True)


# evaluation state files edited between runs
def _state_case(edit: Callable[[dict], None]):
    """An interrupted evaluation's state file, edited; rerunning the same command must refuse it."""
    argv = ["eval", "run", "--attack", "pgd", "--steps", "1", "--restarts", "1", "--n-ex", "20", "--batch-size", "5",
            "--out", "ev", "--no-progress"]

    def setup(ws: Path) -> None:
        from robustrain.evaluation import state as st

        calls = {"n": 0}
        original = st.EvalState.save

        def save_then_stop(self):
            original(self)
            calls["n"] += 1
            if calls["n"] == 6:  # clean done, PGD half-way
                raise KeyboardInterrupt

        st.EvalState.save = save_then_stop
        try:
            assert main(argv) == 130
        finally:
            st.EvalState.save = original
        (path,) = (ws / "ev").glob(".eval_state-*.json")
        saved = json.loads(path.read_text())
        edit(saved)
        path.write_text(json.dumps(saved))

    return (lambda ws: main(argv)), setup


def _all_robust(saved: dict) -> None:
    for stage in saved["stages"].values():
        stage["robust"] = "1" * len(stage["robust"])


def _inconsistent(saved: dict) -> None:
    """PGD robust on every point, clean left as it was (clean accuracy below 100 %), checksum recomputed."""
    for name, stage in saved["stages"].items():
        if name != "clean":
            stage["robust"] = "1" * len(stage["robust"])
    saved["digest"] = __import__("robustrain.evaluation.state", fromlist=["x"])._digest(saved["key"], saved["stages"])


def _foreign(saved: dict) -> None:
    saved["key"] = "0123456789abcdef"


def _unreadable(saved: dict) -> None:
    saved.clear()


for cid, edit, needles in [("edited_to_all_robust", _all_robust, ("was changed after robustrain wrote it", "Delete it")),
                           ("edited_with_recomputed_checksum", _inconsistent, ("inconsistent", "Delete it")),
                           ("key_changed", _foreign, ("belongs to another evaluation", "delete it"))]:
    run, setup = _state_case(edit)
    case(f"state-{cid}", run, *needles, setup=setup)


# run folders the commands write into
def _locked_holder(ws: Path) -> None:
    code = ("import sys, time; from robustrain.runlock import folder_lock\n"
            "with folder_lock(sys.argv[1], 'robustrain train -c other.yaml'):\n"
            "    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ws / "run")], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    HOLDERS.append(proc)


HOLDERS: list[subprocess.Popen] = []
case("lock-resume_while_another_trains", resume, "in use by another robustrain process", "other.yaml", "started",
     setup=_locked_holder)
case("lock-eval_while_another_trains", evaluate("run", "--attack", "pgd", "--steps", "1", "--n-ex", "5"),
     "in use by another robustrain process", "--out NEW_DIR", setup=_locked_holder)
case("perm-read_only_run_folder", resume, "Permission denied", "permissions",
     setup=lambda ws: os.chmod(ws / "run", 0o555), skip="root ignores permissions" if IS_ROOT else None)
case("perm-unreadable_checkpoint", evaluate("run"), "Permission denied", "permissions",
     setup=lambda ws: os.chmod(ws / "run" / "best.pt", 0), skip="root ignores permissions" if IS_ROOT else None)
case("perm-read_only_out_folder", evaluate("run", "--attack", "pgd", "--steps", "1", "--n-ex", "5", "--out", "ro"),
     "Permission denied", "permissions", setup=lambda ws: (ws / "ro").mkdir(mode=0o555),
     skip="root ignores permissions" if IS_ROOT else None)


@pytest.fixture(autouse=True)
def _stop_holders():
    yield
    while HOLDERS:
        p = HOLDERS.pop()
        p.kill()
        p.wait()


@pytest.mark.parametrize("c", [pytest.param(c, id=c.id, marks=(
    [pytest.mark.skip(reason=c.skip)] if c.skip else [])) for c in CASES])
def test_matrix(c: Case, ws: Path, capsys):
    if c.setup is not None:
        c.setup(ws)
    capsys.readouterr()
    before = tree_hash(ws)
    if c.api:
        with pytest.raises(c.raises) as info:
            c.run(ws)
        message = str(info.value)
        out = err = ""
    else:
        code = c.run(ws)
        out, err = capsys.readouterr()
        message = err
        assert code == 2, f"exit code {code} (expected 2); stderr: {err[-600:]}; stdout: {out[-300:]}"
    assert "Traceback" not in err + out
    for needle in c.needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in the message: {message}"
    for p in ws.rglob("*"):  # restore permissions before hashing
        if p.is_dir():
            os.chmod(p, 0o755)
    assert tree_hash(ws) == before, "the failed command changed files"


def test_matrix_size_and_categories():
    """The matrix covers every category with at least 120 cases; ids are unique."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    kinds = {i.split("-")[0] for i in ids}
    assert {"config", "file", "run", "ckpt", "eval", "cli", "report", "data", "api", "state", "lock"} <= kinds
    assert len(ids) >= 120, len(ids)


case("api-default_config_model_does_not_fit", lambda ws: __import__("robustrain.build", fromlist=["x"]).build_trainer(
    __import__("robustrain.config", fromlist=["x"]).load_config(None), ws / "default_run"), "(1, 8, 8)",
    "input_size: 8", api=True)


# -- inputs that are handled, not refused ----------------------------------------------------------------
def test_checkpoints_have_the_mode_of_every_other_file(trained_run):
    """Checkpoints follow the umask like config.yaml and metrics.jsonl (they were 0600)."""
    modes = {p.name: p.stat().st_mode & 0o777 for p in trained_run.iterdir() if p.is_file()}
    assert modes["best.pt"] == modes["last.pt"] == modes["config.yaml"] == modes["metrics.jsonl"]


def test_report_tolerates_a_torn_last_metrics_line(ws, capsys):
    metrics = ws / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"kind": "step", "step": 9')  # killed mid-line
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert main(["report", "run", "--out", "rep"]) == 0
    assert (ws / "rep" / "report.md").exists()


def test_gradient_masking_exits_3_with_a_headline(ws, capsys):
    """A model whose input gradients are zero (it rounds its inputs): the evaluation says its number is not
    trustworthy first, on stdout, and exits 3."""
    (ws / "masked.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Round(nn.Module):\n    def forward(self, x):\n        return torch.round(x * 4) / 4\n"
        "def build():\n    torch.manual_seed(0)\n    return nn.Sequential(Round(), nn.Flatten(), nn.Linear(64, 10))\n")
    sys.modules.pop("masked", None)
    code = main(["eval", "--model", "masked:build", "--dataset", "digits", "--eps", "0.1", "--attack", "pgd",
                 "--steps", "2", "--restarts", "1", "--n-ex", "20", "--out", "ev", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 3
    assert out.startswith("NOT TRUSTWORTHY") and "zero_gradients" in out.splitlines()[0]
    assert "zero_gradients" in err and "Traceback" not in err


@pytest.mark.slow
def test_torn_metrics_line_resume_and_stale_temporaries(ws, capsys):
    """A run killed mid-line and mid-write: --resume drops the torn line (and says so), removes the half-written
    temporaries, and the log holds every step once."""
    run = ws / "run"
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"kind": "step", "step": 9')
    (run / ".last.pt.0a1b2c3d.tmp").write_bytes(b"half")
    (run / ".summary.json.0a1b2c3d.tmp").write_text("{")
    assert main(["train", "-c", "recipe.yaml", "--run-dir", "run", *sets(*TINY, "train.epochs=2"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "torn last line" in out and ".last.pt.0a1b2c3d.tmp" in out
    assert not list(run.glob(".*.tmp"))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


@pytest.mark.slow
def test_restart_after_a_kill_before_the_first_checkpoint_logs_each_step_once(ws, capsys):
    """Killed before its first checkpoint (a log, no .pt): started again without --resume (there is nothing to
    resume), the log starts afresh instead of repeating the first steps."""
    run = ws / "fresh"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "step", "epoch": 0, "step": 1, "loss": 2.3}\n')
    assert main(["train", "-c", "recipe.yaml", "--run-dir", "fresh", *sets(*TINY)]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[0] == 1


@pytest.mark.slow
def test_no_validation_split_trains_without_best(ws, capsys):
    """data.val_size: 0 is a run without validation: last.pt only, and the summary says so (it used to fail with a
    KeyError after the first epoch)."""
    assert main(["train", "-c", "recipe.yaml", "--run-dir", "noval", *sets(*TINY, "data.val_size=0")]) == 0
    summary = json.loads((ws / "noval" / "summary.json").read_text())
    assert [r["checkpoint"] for r in summary["test"]] == ["last"] and "no validation split" in summary["selection"]
    assert not (ws / "noval" / "best.pt").exists()


def test_a_cifar_file_cut_to_500_records_is_announced(ws):
    """Fewer records than the official file: loaded (small files in the official layout are used for tests), with a
    warning naming the file, its size and the official count."""
    _cifar(500)(ws)
    with pytest.warns(RuntimeWarning, match=r"test_batch.bin holds 500 images \(1536500 bytes\).*holds 10000"):
        load("cifar10", "cifar")(ws)
