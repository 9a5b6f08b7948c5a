"""robustrain: adversarial training for PyTorch image classifiers that tells the truth about robustness.

The package is layered; a package or top module imports only its own layer and the layers below it
(tests/test_layering.py checks it: no import cycle between packages, at most 2 upward imports). Lowest first:

1. ``errors``, ``registry``, ``tables``, ``provenance``, ``atomic``, ``guards``, ``runlock``: the foundation (error
   types and the one unknown-name message; the ``Registry`` that keeps every kind of named thing, each entry
   registered at its definition; markdown tables, git commit and environment, atomic writes, model-mode guards, the
   run-folder lock).
2. ``threat``, ``distributed``: the threat model (ε-ball ∩ [0,1] box); the torchrun process group.
3. ``kernels``: the attack-step operations (PyTorch reference, Triton kernels).
4. ``data``, ``models``: datasets (in memory or streamed from disk) and resumable loaders; the architectures.
5. ``attacks``: FGSM, FGSM-RS, N-FGSM, FGSM-MEP, PGD, TRADES, BETA; the attack guard; attacks from config sections.
6. ``evaluation``: clean / robust accuracy, the AutoAttack cascade, sanity checks, the report.
7. ``training``: the one Trainer loop, its hooks (loss terms, weight perturbation, training procedures), callbacks,
   schedules, checkpoints, the overfitting monitor and the remedies the Trainer applies.
8. ``regularisers``, ``perturbation``: loss terms and weight perturbations plugged into training's hooks.
9. ``tracking``, ``reporting``: Weights & Biases; plots and tables of run folders.
10. ``config``: typed, validated recipes (checked against the registries of the layers below).
11. ``build``: a config → data, model, attacks, monitor and the Trainer.
12. ``run``, ``benchmarking``: the run folder, fit and final evaluation; the benchmark scripts' kit.
13. ``cli``, ``__main__``, ``api``: the ``robustrain`` command (``train``, ``eval``, ``report``, ``recipes``), the
    sweep program, and the Python-first API below.

The Python-first API (``robustrain.api``, re-exported here), e.g.::

    import robustrain as rt

    result = rt.train("quickstart_digits", train={"epochs": 5})      # a bundled recipe (rt.list_recipes())
    model = rt.load_model(result["run_dir"])                          # rebuilt from config.yaml + best.pt, eval mode
    report = rt.evaluate(model, "digits", eps=0.1, attacks=["pgd"])  # clean + PGD-50-10 on the test split
    print(report["accuracy"])                                         # {'clean': ..., 'pgd-50-10': ..., ...}
    pgd = rt.build_attack("pgd", eps=0.1, steps=20)
    x_adv = pgd(model, x, y).x_adv                                    # x: N x C x H x W in [0, 1]

Importing ``robustrain`` itself loads nothing else: ``__version__``, the API functions and the subpackages are
resolved on first use by the module ``__getattr__`` below (the one place the package root reaches into a layer,
the top one; tests/test_layering.py checks that ``import robustrain`` imports no submodule).
"""

__all__ = [
    "__version__", "api", "atomic", "attacks", "benchmarking", "build", "build_attack", "cli", "config", "data",
    "distributed", "errors", "evaluate", "evaluation", "guards", "kernels", "list_recipes", "load_model", "models",
    "perturbation", "provenance", "registry", "regularisers", "reporting", "run", "runlock", "tables", "threat",
    "tracking", "train", "training",
]

_API = ("build_attack", "evaluate", "list_recipes", "load_model", "train")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("robustrain")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def __getattr__(name: str):
    """Lazy attributes: ``__version__`` (from the installed package's metadata), the API functions of
    :mod:`robustrain.api` and the subpackages / modules, each imported on first use."""
    import importlib

    if name == "__version__":
        value = _version()
    elif name in _API:
        value = getattr(importlib.import_module("robustrain.api"), name)
    elif name in __all__:
        value = importlib.import_module(f"robustrain.{name}")
    else:
        raise AttributeError(f"module 'robustrain' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
