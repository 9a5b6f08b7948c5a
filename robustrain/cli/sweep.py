"""The program a wandb sweep agent runs: sweep parameters in, one ``robustrain train`` run out.

    python robustrain/cli/sweep.py method=nfgsm eps=16 seed=1 [key.sub=value ...]

(the agent passes ``${args_no_hyphens}``; ``--key=value`` is accepted too). ``method`` names a bundled CIFAR-10 recipe
``configs/cifar10_<method>.yaml``; ``eps`` is the L∞ radius in pixel levels (/255). When a recipe for that radius
exists (``cifar10_<method>_eps16.yaml``: its regulariser weights and step sizes are the paper's for that ε) it is
used; otherwise the base recipe's radius and every step size (training attack, validation and test PGD) are
scaled by the same factor, which keeps α/ε as the paper states it (FGSM-RS 1.25ε, N-FGSM ε, PGD ε/4). Every
other ``key=value`` is a config override. The run folder is ``runs/sweeps/<recipe>_eps<eps>_seed<seed>``; the
wandb run is grouped by method and ε, so the seeds of one setting sit together.
"""
from __future__ import annotations

import sys
from pathlib import Path

from robustrain.config import RECIPES_DIR, load_config, parse_number
from robustrain.errors import ConfigError


def parse_args(argv: list[str]) -> dict[str, str]:
    params = {}
    for item in argv:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep:
            raise ConfigError(f"sweep argument {item!r} must look like key=value (e.g. method=nfgsm eps=8 seed=0).")
        params[key] = value
    for required in ("method", "eps", "seed"):
        if required not in params:
            raise ConfigError(f"sweep arguments need {required}=...; got {' '.join(argv) or 'none'}.")
    return params


def train_argv(argv: list[str], configs: Path = RECIPES_DIR, out_dir: str = "runs/sweeps") -> list[str]:
    """The ``robustrain`` command line (without the program name) for one sweep run."""
    params = parse_args(argv)
    method, eps, seed = params.pop("method"), params.pop("eps"), params.pop("seed")
    levels = parse_number(eps, "eps")
    recipe = configs / f"cifar10_{method}.yaml"
    if not recipe.exists():
        known = sorted(p.stem.removeprefix("cifar10_") for p in configs.glob("cifar10_*.yaml") if "_eps" not in p.stem)
        raise ConfigError(f"method={method!r}: no recipe {recipe}; known methods: {', '.join(known)}.")
    specific = configs / f"cifar10_{method}_eps{levels:g}.yaml"
    sets: list[str] = []
    if specific.exists():
        recipe = specific
    else:
        base = load_config(recipe)
        factor = levels / 255 / base.threat.eps
        if abs(factor - 1) > 1e-9:
            sets.append(f"threat.eps={levels:g}/255")
            for key, section in (("attack", base.attack), ("validation.attack", base.validation.attack),
                                 ("eval.attack", base.eval.attack)):
                if section.get("step") is not None:
                    sets.append(f"{key}.step={section['step'] * factor!r}")
    name = f"{recipe.stem.removesuffix(f'_eps{levels:g}')}_eps{levels:g}_seed{seed}"
    sets += [f"seed={seed}", f"name={name}", f"wandb.group=cifar10_{method}_eps{levels:g}",
             f"wandb.tags=[sweep, {method}, eps{levels:g}]"]
    sets += [f"{k}={v}" for k, v in params.items()]
    argv_out = ["train", "-c", str(recipe), "--run-dir", f"{out_dir}/{name}"]
    for s in sets:
        argv_out += ["--set", s]
    return argv_out


def main(argv: list[str] | None = None) -> int:
    from robustrain.cli.main import main as cli_main

    try:
        args = train_argv(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"robustrain sweep: error: {e}", file=sys.stderr)
        return 2
    print("robustrain " + " ".join(args), flush=True)
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
