"""Write every recipe's resolved config to a JSON snapshot (the guard of tests/test_recipes_resolve.py).

    .venv/bin/python scripts/snapshot_recipes.py [--out tests/data/resolved_recipes.json]

For each ``configs/*.yaml`` (the recipes; ``configs/base/`` holds the files they build on and is not listed) the
snapshot holds ``to_dict(load_config(path))``: every setting the recipe trains with, after its ``defaults:`` files
and the schema's defaults are applied. The test asserts that each recipe still resolves to exactly this, so a paper
setting cannot drift silently when recipes or their base files are edited. Regenerate it only for an intended
change of a resolved setting (a new config field, a corrected recipe) and review the diff of the JSON file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robustrain.config import load_config, to_dict  # noqa: E402

CONFIGS = REPO / "configs"
SNAPSHOT = REPO / "tests" / "data" / "resolved_recipes.json"


def recipes(configs: Path = CONFIGS) -> list[Path]:
    """The recipes: the YAML files directly in ``configs/`` (not the base files, not the sweeps)."""
    return sorted(configs.glob("*.yaml"))


def resolve(path: Path) -> dict:
    """The recipe's resolved config as JSON data (tuples become lists, as in the snapshot)."""
    return json.loads(json.dumps(to_dict(load_config(path))))


def snapshot(configs: Path = CONFIGS) -> dict:
    return {p.name: resolve(p) for p in recipes(configs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SNAPSHOT)
    args = parser.parse_args(argv)
    data = snapshot()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{len(data)} recipes -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
