"""The import structure: robustrain's packages and top modules form layers, and no layer imports one above it.

Every ``import`` / ``from ... import`` in robustrain/**/*.py counts, wherever it stands (module level, inside a
function, under ``if TYPE_CHECKING``). A *unit* is a package or top module directly under robustrain/ (``training``,
``config``, ...). The test fails on an import cycle between units and on more than MAX_UPWARD imports of a unit from
a higher layer; every unit must have a layer, so a new package or top module is placed deliberately. The same order
is stated in robustrain/__init__.py's docstring.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robustrain"

# lowest first; a unit may import units of its own layer and of the layers below it
LAYERS: list[tuple[str, ...]] = [
    ("errors", "registry", "tables", "provenance", "atomic", "guards", "runlock"),  # foundation: no robustrain imports but these
    ("threat", "distributed"),
    ("kernels",),
    ("data", "models"),
    ("attacks",),
    ("evaluation",),
    ("training",),
    ("regularisers", "perturbation"),   # plug into training's hooks
    ("tracking", "reporting"),
    ("config",),                        # validates recipes against the registries below it
    ("build",),                         # config -> data, model, attacks, Trainer
    ("run", "benchmarking"),            # run folder, fit, final evaluation; the benchmark scripts' kit
    ("cli", "__main__", "api"),         # the command line; the Python-first API (re-exported lazily by robustrain)
]
MAX_UPWARD = 2
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _imported_modules(path: Path) -> list[tuple[str, int]]:
    """The robustrain modules ``path`` imports (absolute names), with line numbers."""
    name, is_package = _module_name(path)
    package = name.split(".") if is_package else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "robustrain"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "robustrain":
                continue
            if module == "robustrain":  # from robustrain import kernels: the names are the modules
                out += [(f"robustrain.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((module, node.lineno))
    return out


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: robustrain itself


def import_edges() -> list[tuple[str, str, str, int]]:
    """(importing unit, imported unit, importing file, line) for every import between two different units."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src_unit = _unit(_module_name(path)[0])
        for module, line in _imported_modules(path):
            dst_unit = _unit(module)
            if src_unit is not None and dst_unit is not None and src_unit != dst_unit:
                edges.append((src_unit, dst_unit, str(path.relative_to(ROOT)), line))
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    missing = sorted(units - set(LAYER_OF))
    assert not missing, f"place these packages/modules in LAYERS (and robustrain/__init__.py's docstring): {missing}"
    assert not set(LAYER_OF) - units, f"LAYERS names units that do not exist: {sorted(set(LAYER_OF) - units)}"


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for src, dst, _, _ in import_edges():
        graph.setdefault(src, set()).add(dst)
    cycles = _cycles(graph)
    where = {(s, d): f"{f}:{n}" for s, d, f, n in import_edges()}
    detail = [" -> ".join(c) + "  (" + ", ".join(f"{s}->{d} at {where[s, d]}" for s in c for d in c
                                                   if (s, d) in where) + ")" for c in cycles]
    assert not cycles, "import cycles between packages:\n" + "\n".join(detail)


def test_at_most_two_upward_imports():
    upward = sorted({(src, dst, f, n) for src, dst, f, n in import_edges() if LAYER_OF[dst] > LAYER_OF[src]})
    assert len(upward) <= MAX_UPWARD, "imports of a higher layer:\n" + "\n".join(
        f"{f}:{n}: {src} imports {dst}" for src, dst, f, n in upward)


def test_the_layer_order_is_stated_in_the_package_docstring():
    import robustrain

    doc = robustrain.__doc__ or ""
    positions = [[doc.find(f"``{unit}``") for unit in units] for units in LAYERS]
    assert all(p >= 0 for ps in positions for p in ps), "robustrain/__init__.py's docstring must name every unit"
    assert all(max(a) < min(b) for a, b in zip(positions, positions[1:])), \
        "robustrain/__init__.py's docstring must list the layers in the order of LAYERS"


def test_scripts_do_not_import_each_other():
    """Shared benchmark code lives in robustrain.benchmarking; scripts import robustrain, never another script."""
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    offenders = []
    for path in sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in scripts]
    assert not offenders, "\n".join(offenders)


def test_importing_robustrain_loads_nothing_else():
    """The package root's lazy attributes (``__version__``, ``robustrain.train`` ...) import on first use only; the
    package root is the one module outside the layers (it may reach the top layer, ``api``, lazily)."""
    import subprocess
    import sys

    code = ("import sys, robustrain; print(sorted(m for m in sys.modules if m.startswith('robustrain.') or m in "
            "('torch', 'numpy', 'yaml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    code = "import robustrain as rt; print(rt.__version__, callable(rt.load_model), rt.data.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    version, is_callable, data = out.stdout.split()
    assert version[0].isdigit() and is_callable == "True" and data == "robustrain.data"
