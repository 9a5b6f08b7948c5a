"""robustrain: adversarial training for PyTorch image classifiers that tells the truth about robustness.

The package is layered; a package or top module imports only its own layer and the layers below it
(tests/test_layering.py checks it: no import cycle between packages, at most 2 upward imports). Lowest first:

1. ``errors``, ``registry``, ``tables``, ``provenance``, ``atomic``, ``guards``, ``runlock``: the foundation (error
   types and the one unknown-name message; the ``Registry`` that keeps every kind of named thing, each entry
   registered at its definition; markdown tables, git commit and environment, atomic writes, model-mode guards, the
   run-folder lock).
2. ``threat``, ``distributed``: the threat model (ε-ball ∩ [0,1] box); the torchrun process group.
3. ``kernels``: the attack-step operations (PyTorch reference, Triton kernels).
4. ``data``, ``models``: in-memory datasets and resumable loaders; the architectures.
5. ``attacks``: FGSM, FGSM-RS, N-FGSM, FGSM-MEP, PGD, TRADES, BETA; the attack guard; attacks from config sections.
6. ``evaluation``: clean / robust accuracy, the AutoAttack cascade, sanity checks, the report.
7. ``training``: the one Trainer loop, its hooks (loss terms, weight perturbation, training procedures), callbacks,
   schedules, checkpoints, the overfitting monitor and the remedies the Trainer applies.
8. ``regularisers``, ``perturbation``: loss terms and weight perturbations plugged into training's hooks.
9. ``tracking``, ``reporting``: Weights & Biases; plots and tables of run folders.
10. ``config``: typed, validated recipes (checked against the registries of the layers below).
11. ``build``: a config → data, model, attacks, monitor and the Trainer.
12. ``run``, ``benchmarking``: the run folder, fit and final evaluation; the benchmark scripts' kit.
13. ``cli``, ``__main__``: the ``robustrain`` command (``train``, ``eval``, ``report``) and the sweep program.

Import from the subpackages (``from robustrain.attacks import build_attack``); importing ``robustrain`` itself
loads nothing else.
"""

__all__ = [
    "atomic", "attacks", "benchmarking", "build", "cli", "config", "data", "distributed", "errors", "evaluation",
    "guards", "kernels", "models", "perturbation", "provenance", "registry", "regularisers", "reporting", "run", "runlock",
    "tables", "threat", "tracking", "training",
]
