"""The direction of imports (docs/design.md#package-layout-and-import-direction), read from the
source with ``ast`` (nothing is imported):

- a command package (a subpackage of ``dalle_fast`` with a ``__main__.py``: train, generate,
  evaluate, ...) never imports another command package, and the core never imports a command;
- ``dalle_kernels`` never imports ``dalle_fast``;
- the data package never imports a model, not even through other modules;
- no import cycle: no two modules import each other, directly or through others, with imports
  inside functions counted and with the package ``__init__`` that importing a submodule runs.

The checks run on the repository and, to show that each can fail, on small trees with one planted
violation each.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"dalle_fast": "dalle_fast", "dalle_kernels": "kernels"}  # import name -> folder
MODEL_MODULES = ("dalle_fast.dvae", "dalle_fast.dvae_nets", "dalle_fast.dvae_loss", "dalle_fast.model",
                 "dalle_fast.clip")


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the packages under ``root``: dotted name -> file (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for name, folder in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((name, *parts))] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that importing ``module`` (source ``path``) imports directly: every
    ``import``/``from ... import`` anywhere in the file (also inside functions), a ``from pkg
    import name`` counting ``pkg.name`` when that is a module, plus the packages whose
    ``__init__`` runs first (those of the imported module that do not contain ``module``)."""
    known = set(known)
    package = module if _is_package(path) else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets.add(source)
            targets.update(f"{source}.{alias.name}" for alias in node.names)
    direct = {t for t in targets if t in known}
    own = set(_ancestors(module)) | {module}
    implicit = {a for t in direct for a in _ancestors(t) if a in known and a not in own}
    return (direct | implicit) - {module}


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules it imports, for every module under ``root``."""
    modules = module_files(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def command_packages(root: Path) -> set[str]:
    """The subpackages of dalle_fast that are commands (they have a ``__main__.py``)."""
    return {f"dalle_fast.{main.parent.name}" for main in (root / "dalle_fast").glob("*/__main__.py")}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports directly or through others -> the module that imports it."""
    seen: dict[str, str] = {}
    stack = [start]
    while stack:
        current = stack.pop()
        for target in graph.get(current, ()):
            if target not in seen:
                seen[target] = current
                stack.append(target)
    return seen


def _chain(seen: dict[str, str], start: str, end: str) -> str:
    """The import chain from ``start`` to ``end`` in ``seen`` (of :func:`_reachable`), "a -> b -> c"."""
    path = [end, seen[end]]
    while path[-1] != start:
        path.append(seen[path[-1]])
    return " -> ".join(reversed(path))


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One import chain per module that is part of a cycle ("a -> b -> a"), each cycle once."""
    found, reported = [], set()
    for module in sorted(graph):
        seen = _reachable(graph, module)
        if module in seen and module not in reported:
            chain = _chain(seen, module, module)
            found.append(chain)
            reported.update(chain.split(" -> "))
    return found


def violations(root: Path) -> list[str]:
    """Every broken rule of the module doc in the tree under ``root``, one line each."""
    graph = import_graph(root)
    commands = command_packages(root)
    problems = []
    for module, targets in sorted(graph.items()):
        home = next((c for c in commands if _within(module, c)), None)
        for target in sorted(targets):
            other = next((c for c in commands if _within(target, c)), None)
            if other is not None and other != home:
                what = f"the command {home}" if home else "the core"
                problems.append(f"{module} imports {target}: {what} imports the command {other}")
            if _within(module, "dalle_kernels") and _within(target, "dalle_fast"):
                problems.append(f"{module} imports {target}: dalle_kernels must not import dalle_fast")
        if _within(module, "dalle_fast.data"):
            seen = _reachable(graph, module)
            problems += [f"{module} imports the model {m} ({_chain(seen, module, m)})"
                         for m in MODEL_MODULES if m in seen]
    problems += [f"import cycle: {chain}" for chain in cycles(graph)]
    return problems


def test_the_repository_follows_the_import_rules() -> None:
    assert violations(ROOT) == []


def test_the_generation_evaluation_and_serve_commands_do_not_import_training() -> None:
    graph = import_graph(ROOT)
    for command in ("dalle_fast.generate", "dalle_fast.evaluate", "dalle_fast.serve", "dalle_fast.plan"):
        users = [m for m in graph if _within(m, command)]
        assert users, command
        assert not [t for m in users for t in graph[m] if _within(t, "dalle_fast.train")]


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A tree with the two package folders and ``files`` (path -> source)."""
    for path, source in {"dalle_fast/__init__.py": "", "kernels/__init__.py": "", **files}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(source)
    return tmp_path


COMMANDS = {"dalle_fast/train/__init__.py": "", "dalle_fast/train/__main__.py": "",
            "dalle_fast/generate/__init__.py": "", "dalle_fast/generate/__main__.py": ""}


@pytest.mark.parametrize("files, expected", [
    ({**COMMANDS, "dalle_fast/generate/cli.py": "from ..train.vae import load_vae\n",
      "dalle_fast/train/vae.py": ""},
     "dalle_fast.generate.cli imports dalle_fast.train: the command dalle_fast.generate imports the command"),
    ({**COMMANDS, "dalle_fast/sampling.py": "def f():\n    import dalle_fast.generate\n"},
     "dalle_fast.sampling imports dalle_fast.generate: the core imports the command"),
    ({"kernels/ops.py": "from dalle_fast import config\n", "dalle_fast/config.py": ""},
     "dalle_kernels.ops imports dalle_fast.config: dalle_kernels must not import dalle_fast"),
    ({"dalle_fast/data/__init__.py": "", "dalle_fast/data/cache.py": "from ..encode import encode\n",
      "dalle_fast/encode.py": "from .dvae import DiscreteVAE\n", "dalle_fast/dvae.py": ""},
     "dalle_fast.data.cache imports the model dalle_fast.dvae (dalle_fast.data.cache -> dalle_fast.encode -> "
     "dalle_fast.dvae)"),
    ({"dalle_fast/a.py": "from . import b\n", "dalle_fast/b.py": "def f():\n    from .a import g\n"},
     "import cycle: dalle_fast.a -> dalle_fast.b -> dalle_fast.a"),
    ({"dalle_fast/config.py": "from .data.spec import HOLDOUT\n",
      "dalle_fast/data/__init__.py": "from .shapes import S\n",
      "dalle_fast/data/shapes.py": "from ..config import C\n", "dalle_fast/data/spec.py": ""},
     "import cycle: dalle_fast.config -> dalle_fast.data -> dalle_fast.data.shapes -> dalle_fast.config"),
])
def test_each_rule_fails_on_a_planted_violation(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    problems = violations(_tree(tmp_path, files))
    assert any(p.startswith(expected) for p in problems), problems


def test_a_tree_that_follows_the_rules_passes(tmp_path: Path) -> None:
    files = {**COMMANDS, "dalle_fast/generate/cli.py": "from ..run import open_run\nimport torch\n",
             "dalle_fast/train/cli.py": "from .. import run\nfrom .loop import Loop\n",
             "dalle_fast/train/loop.py": "from ..data.splits import load\n",
             "dalle_fast/run.py": "from .dvae import V\n",
             "dalle_fast/dvae.py": "import dalle_kernels\n", "dalle_fast/data/__init__.py": "",
             "dalle_fast/data/splits.py": "from .shapes import S\n", "dalle_fast/data/shapes.py": ""}
    assert violations(_tree(tmp_path, files)) == []
