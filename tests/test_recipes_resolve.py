"""Recipes as deltas (issue 14): a recipe lists ``defaults: [base/cifar10.yaml, ...]`` and states only what it
changes. The guard: every recipe still resolves to the settings it had as a full copy (tests/data/resolved_recipes.json,
written by scripts/snapshot_recipes.py from main before the conversion), and each is at most 25 lines of its own
besides comments. Also: the merge rules, cycles, missing files, unknown keys in a base file, the run folder's
config.yaml."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from robustrain.config import dump_yaml, load_config, read_recipe, to_dict
from robustrain.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SNAPSHOT = json.loads((ROOT / "tests" / "data" / "resolved_recipes.json").read_text())
RECIPES = sorted(CONFIGS.glob("*.yaml"))
MAX_OWN_LINES = 25


def resolve(path: Path) -> dict:
    """The recipe's resolved config as JSON data, as scripts/snapshot_recipes.py writes it."""
    return json.loads(json.dumps(to_dict(load_config(path))))


def own_lines(path: Path) -> list[str]:
    """The lines of a YAML file that are not blank and not only a comment."""
    return [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_snapshot_covers_every_recipe():
    assert sorted(SNAPSHOT) == [p.name for p in RECIPES], (
        "a recipe was added or removed: run scripts/snapshot_recipes.py and review tests/data/resolved_recipes.json")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_resolves_to_its_snapshot(path):
    got, want = resolve(path), SNAPSHOT[path.name]
    diff = {f"{section}": (got.get(section), want.get(section)) for section in {*got, *want}
            if got.get(section) != want.get(section)}
    assert not diff, f"{path.name} resolves differently from its snapshot (got, snapshot): {diff}"


@pytest.mark.parametrize("path", [*RECIPES, *sorted((CONFIGS / "base").glob("*.yaml"))],
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_is_short(path):
    lines = own_lines(path)
    assert len(lines) <= MAX_OWN_LINES, f"{path.name}: {len(lines)} lines besides comments (at most {MAX_OWN_LINES})"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_resolved_recipe_has_no_defaults_key(path):
    assert "defaults" not in read_recipe(path)
    assert "defaults" not in yaml.safe_load(dump_yaml(load_config(path)))


def test_the_eps16_twins_are_deltas_over_their_eps8_recipe():
    for twin in CONFIGS.glob("*_eps16.yaml"):
        data = yaml.safe_load(twin.read_text())
        assert data["defaults"] == [twin.name.replace("_eps16", "")], twin.name
        assert len(own_lines(twin)) <= 12, twin.name


# -- the merge rules -------------------------------------------------------------------------------------------
def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_merge_in_order_then_the_file_then_overrides(tmp_path):
    write(tmp_path, "base/a.yaml", "train: {epochs: 3, log_every: 7}\ndata: {name: digits, val_size: 100}\n"
                                   "wandb: {tags: [a, b]}\nseed: 1\n")
    write(tmp_path, "base/b.yaml", "train: {epochs: 4}\nwandb: {tags: [c]}\n")
    recipe = write(tmp_path, "r.yaml", "defaults: [base/a.yaml, base/b.yaml]\nname: r\ndata: {val_size: 50}\n")
    cfg = load_config(recipe, ["train.log_every=9"])
    assert cfg.train.epochs == 4 and cfg.train.log_every == 9  # b over a; the override last
    assert cfg.data.name == "digits" and cfg.data.val_size == 50  # mappings merge key by key
    assert cfg.wandb.tags == ["c"] and cfg.seed == 1 and cfg.name == "r"  # lists replace
    assert "defaults" not in to_dict(cfg) and "defaults" not in dump_yaml(cfg)


def test_defaults_are_relative_to_the_listing_file_and_nest(tmp_path):
    write(tmp_path, "base/root.yaml", "train: {epochs: 2}\nseed: 5\n")
    write(tmp_path, "base/mid.yaml", "defaults: [root.yaml]\ntrain: {epochs: 6}\n")
    recipe = write(tmp_path, "deep/r.yaml", "defaults: [../base/mid.yaml]\nname: r\n")
    cfg = load_config(recipe)
    assert cfg.train.epochs == 6 and cfg.seed == 5


def test_a_cycle_names_the_chain(tmp_path):
    write(tmp_path, "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path, "b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path, "self.yaml", "defaults: [self.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")


def test_a_missing_base_names_the_chain_and_the_closest_file(tmp_path):
    write(tmp_path, "base/cifar10.yaml", "seed: 1\n")
    write(tmp_path, "mid.yaml", "defaults: [base/cifar100.yaml]\n")
    recipe = write(tmp_path, "r.yaml", "defaults: [mid.yaml]\n")
    with pytest.raises(ConfigError, match=r"r\.yaml -> .*mid\.yaml -> .*base/cifar100\.yaml.*base/cifar10\.yaml"):
        load_config(recipe)


def test_bad_defaults_values(tmp_path):
    with pytest.raises(ConfigError, match="list of YAML files"):
        load_config(write(tmp_path, "r.yaml", "defaults: {a: 1}\n"))
    write(tmp_path, "base.yaml", "- 1\n")
    with pytest.raises(ConfigError, match=r"base\.yaml.*mapping"):
        load_config(write(tmp_path, "s.yaml", "defaults: [base.yaml]\n"))
    with pytest.raises(ConfigError, match="defaults are read from the recipe"):
        load_config(write(tmp_path, "t.yaml", "seed: 1\n"), ["defaults=[base.yaml]"])


def test_unknown_keys_in_a_base_file_name_that_file(tmp_path):
    write(tmp_path, "base/b.yaml", "train: {epochz: 3}\n")
    recipe = write(tmp_path, "r.yaml", "defaults: [base/b.yaml]\n")
    with pytest.raises(ConfigError, match=r"did you mean 'train.epochs'.*base/b\.yaml, a defaults file of .*r\.yaml"):
        load_config(recipe)
    write(tmp_path, "base/c.yaml", "attack: {name: fgsm, stpe: 8/255}\n")
    recipe = write(tmp_path, "s.yaml", "defaults: [base/c.yaml]\n")
    with pytest.raises(ConfigError, match=r"attack\.stpe.*base/c\.yaml"):
        load_config(recipe)
    write(tmp_path, "base/d.yaml", "threat: {eps: 8}\n")
    with pytest.raises(ConfigError, match=r"8/255.*base/d\.yaml"):
        load_config(write(tmp_path, "u.yaml", "defaults: [base/d.yaml]\n"))
    # a key the recipe or an override sets is not blamed on the base file
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "v.yaml", "defaults: [base/d.yaml]\nthreat: {eps: 9}\n"))
    assert "base/d.yaml" not in str(err.value)
    assert load_config(recipe, ["attack={name: fgsm, step: 8/255}"]).attack["step"] == pytest.approx(8 / 255)
