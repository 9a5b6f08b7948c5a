"""robustrain.registry: one Registry for every kind of named thing, one message for an unknown name, value or key."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from robustrain.errors import ConfigError, UnknownNameError
from robustrain.registry import Registry, choice


class Base:
    name = "base"


def _registry() -> Registry:
    reg: Registry = Registry("toy", base=Base)

    @reg.register
    class Alpha(Base):
        name = "alpha"

        def __init__(self, size: int, *, scale: float = 1.0, shift: float = 0.0):
            self.size, self.scale, self.shift = size, scale, shift

    @reg.register("beta_two")
    class Beta(Alpha):
        def __init__(self, size: int, *, offset: int = 0, **kwargs):
            super().__init__(size, **kwargs)
            self.offset = offset

    return reg


def test_register_reads_the_name_attribute_or_the_given_name_and_keeps_the_order():
    reg = _registry()
    assert reg.names() == ("alpha", "beta_two") and list(reg) == ["alpha", "beta_two"] and len(reg) == 2
    assert "alpha" in reg and "gamma" not in reg and ["unhashable"] not in reg
    assert reg["beta_two"].__name__ == "Beta" and reg.get("alpha").name == "alpha"


def test_duplicates_and_foreign_classes_are_refused():
    reg = _registry()
    with pytest.raises(ValueError, match=r"toy 'alpha' is registered twice .*Alpha and .*Other\); rename one"):
        @reg.register
        class Other(Base):
            name = "alpha"
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(reg["alpha"])  # the same class again: still a second registration
    with pytest.raises(TypeError, match="is not a Base subclass"):
        reg.register(int, name="integer")
    assert reg.names() == ("alpha", "beta_two")


def test_unknown_name_lists_the_choices_and_one_suggestion():
    reg = _registry()
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    assert str(info.value) == "unknown toy 'alpah'; expected one of: alpha, beta_two. Did you mean 'alpha'?"
    assert isinstance(info.value, KeyError) and isinstance(info.value, ConfigError)
    with pytest.raises(ConfigError, match=r"^section.name = 'zzz' is not a known toy; expected one of: alpha, "
                                          r"beta_two\.$"):  # nothing close: no suggestion
        reg.check("zzz", (), where="section")


def test_options_are_the_keyword_only_arguments_of_the_class_and_its_bases():
    reg = _registry()
    assert list(reg.options("alpha")) == ["scale", "shift"]
    assert list(reg.options("beta_two")) == ["offset", "scale", "shift"]
    assert list(reg.options("beta_two", hidden=("shift",))) == ["offset", "scale"]
    with pytest.raises(ConfigError, match=r"unknown key 'sclae' for toy 'alpha'; did you mean 'scale'\? "
                                          r"Valid keys: scale, shift\."):
        reg.build("alpha", 3, sclae=2.0)
    with pytest.raises(ConfigError, match=r"unknown key 'cfg.sclae' for toy 'alpha'; did you mean 'cfg.scale'\? "
                                          r"Valid keys: name, scale, shift\."):  # a config section also has its name
        reg.check("alpha", ["sclae"], where="cfg")
    with pytest.raises(ConfigError, match=r"unknown key 'shift' for toy 'beta_two'.*Valid keys: offset, scale\."):
        reg.check("beta_two", ["shift"], hidden=("shift",))


def test_build_checks_then_constructs_with_the_positional_inputs():
    reg = _registry()
    obj = reg.build("beta_two", 5, offset=2, scale=0.5)
    assert (type(obj).__name__, obj.size, obj.offset, obj.scale, obj.shift) == ("Beta", 5, 2, 0.5, 0.0)
    assert reg.build("alpha", 1) is not reg.build("alpha", 1)  # fresh each time


def test_functions_register_under_their_name_and_a_key_other_than_name():
    funcs: Registry = Registry("factory")

    @funcs.register
    def make_thing(*, width: int = 4):
        return ("thing", width)

    assert funcs.names() == ("make_thing",) and funcs.build("make_thing", width=2) == ("thing", 2)
    by_kind: Registry = Registry("remedy", key="kind")

    @by_kind.register
    class Half:
        kind = "half"

    with pytest.raises(ConfigError, match=r"remedy.kind = 'haf' is not a known remedy.*Did you mean 'half'"):
        by_kind.check("haf", (), where="remedy")


def test_choice_checks_plain_values_with_the_same_message():
    assert choice("norm", "l2", ("linf", "l2"), "threat.norm") == "l2"
    with pytest.raises(UnknownNameError, match=r"^threat.norm = 'l3' is not a known norm; expected one of: linf, l2\. "
                                               r"Did you mean 'l2'\?$"):
        choice("norm", "l3", ("linf", "l2"), "threat.norm")


def test_the_package_registries_hold_the_library_entries():
    from robustrain.attacks import ATTACKS, FGSM, register_attack
    from robustrain.data import DATASETS
    from robustrain.evaluation.backends import BACKENDS
    from robustrain.models import MODELS, register_model
    from robustrain.perturbation import WEIGHT_PERTURBATIONS
    from robustrain.regularisers import REGULARISERS
    from robustrain.training import OBJECTIVES, PROCEDURES, REMEDIES, SCHEDULES, register_procedure
    from robustrain.training.monitor_rules import RULES, register_rule

    registries = [ATTACKS, DATASETS, BACKENDS, MODELS, WEIGHT_PERTURBATIONS, REGULARISERS, OBJECTIVES, PROCEDURES,
                  REMEDIES, SCHEDULES, RULES]
    assert all(isinstance(r, Registry) for r in registries)
    assert ATTACKS["fgsm"] is FGSM and register_attack == ATTACKS.register
    assert register_model == MODELS.register and register_procedure == PROCEDURES.register
    assert register_rule == RULES.register
    assert {"fgsm", "fgsm_rs", "nfgsm", "pgd", "trades"} <= set(ATTACKS)
    assert {"cifar10", "digits", "mnist"} <= set(DATASETS) and set(SCHEDULES) >= {"cyclic", "multistep"}
    assert set(BACKENDS) == {"torchattacks", "autoattack", "fast"} and set(REMEDIES) == {"lr", "attack", "regulariser"}


NAMES = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


@given(names=st.lists(NAMES, min_size=1, max_size=8, unique=True), typo=NAMES)
def test_a_suggestion_is_always_a_registered_name(names, typo):
    reg: Registry = Registry("thing")
    for n in names:
        reg.register(type(n, (), {}), name=n)
    if typo in reg:
        assert reg.check(typo) == {}
        return
    with pytest.raises(UnknownNameError) as info:
        reg.check(typo)
    message = str(info.value)
    assert f"expected one of: {', '.join(sorted(names))}." in message  # sorted, whatever the registration order
    if "Did you mean" in message:
        suggested = message.split("Did you mean ")[1].rstrip("?")
        assert suggested.strip("'") in names


def test_import_modules_imports_the_public_modules_of_a_package(tmp_path, monkeypatch):
    import importlib
    import sys

    pkg = tmp_path / "plugins_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from robustrain.registry import Registry, import_modules\n"
                                     "THINGS = Registry('thing')\n"
                                     "import_modules(__name__, __path__)\n")
    (pkg / "first.py").write_text("from . import THINGS\n\n@THINGS.register\ndef first_thing():\n    return 1\n")
    (pkg / "_private.py").write_text("raise RuntimeError('a module starting with _ is not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("plugins_for_test")
    try:
        assert module.THINGS.names() == ("first_thing",)
    finally:
        for name in [n for n in sys.modules if n.startswith("plugins_for_test")]:
            del sys.modules[name]


def test_the_contributing_examples_are_one_file_each(tmp_path):
    """CONTRIBUTING.md's examples, each placed in its package as the file it names, register themselves and pass
    the config checks (in a fresh process: the registries are the process's)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    blocks = re.findall(r"```python\n# (robustrain/\S+)\n(.*?)```", (root / "CONTRIBUTING.md").read_text(), re.S)
    assert {p.split("/")[1] for p, _ in blocks} >= {"attacks", "regularisers", "data", "training"} and len(blocks) >= 5
    script = tmp_path / "check.py"
    script.write_text(
        "import sys, types\n"
        "blocks = " + repr(blocks) + "\n"
        "import robustrain.attacks, robustrain.regularisers, robustrain.data, robustrain.training.monitor_rules\n"
        "import robustrain.training.procedures\n"
        "for path, code in blocks:\n"
        "    name = path[:-3].replace('/', '.')\n"
        "    module = types.ModuleType(name)\n"
        "    module.__package__ = name.rpartition('.')[0]\n"
        "    sys.modules[name] = module\n"
        "    exec(compile(code, path, 'exec'), module.__dict__)\n"
        "from robustrain.config import load_config\n"
        "from robustrain.data import DATASETS\n"
        "cfg = load_config('configs/quickstart_digits.yaml', ['attack={name: noise, scale: 1/2}',\n"
        "    'regularisers=[{name: logit_pairing, weight: 0.5}]', 'procedures=[{name: freeze_head, epochs: 2}]',\n"
        "    'monitor.rules=[pgd_drop, {name: clean_collapse, floor: 0.3}]'])\n"
        "assert cfg.attack == {'name': 'noise', 'scale': 0.5}, cfg.attack\n"
        "assert 'fashion' in DATASETS and DATASETS['fashion'].download is not None\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
