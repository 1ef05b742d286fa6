"""The import rule of the house (README, Layout): every module of lp_jax/ and pallas_kernels/ sits on a
floor, and no module imports from a higher floor or from another room of its own floor.

    pallas_kernels < lp_jax.model < lp_jax.checkpoint < lp_jax.parallel < lp_jax.engine < lp_jax.sim < lp_jax.llm
        < lp_jax (the public API in lp_jax/__init__.py) < lp_jax.bench, lp_jax.serve < lp_jax.cli

Read with `ast` (module-level and function-level imports alike), so nothing is imported and the test
takes well under a second. A module that is on no floor (a new room) fails too: give it one here.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("lp_jax", "pallas_kernels")
# Room -> floor. A module belongs to the room that is the longest prefix of its dotted name
# ("lp_jax" itself only to the exact module lp_jax, the package's __init__).
FLOORS = {
    "pallas_kernels": 0,
    "lp_jax.model": 1,
    "lp_jax.checkpoint": 2,
    "lp_jax.parallel": 3,
    "lp_jax.engine": 4,
    "lp_jax.sim": 5,
    "lp_jax.llm": 6,
    "lp_jax": 7,
    "lp_jax.bench": 8,
    "lp_jax.serve": 8,
    "lp_jax.cli": 9,
}


def room_of(module: str) -> str | None:
    """The room of a dotted module name of ours, or None if it is on no floor."""
    if module == "lp_jax":
        return "lp_jax"
    rooms = [r for r in FLOORS if r != "lp_jax" and (module == r or module.startswith(r + "."))]
    return max(rooms, key=len, default=None)


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str, root: pathlib.Path) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(tree: ast.Module, module: str, is_package: bool, root: pathlib.Path):
    """(line, dotted name) of every module of ours that `tree` imports, at any depth. `from P import
    X` names P.X when X is a module of ours, else P."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if is_module(sub, root) else base


def violations(root: pathlib.Path = ROOT) -> list[str]:
    """Every import in lp_jax/ and pallas_kernels/ under `root` that breaks the rule, as a sentence
    naming the file, line, importing module and imported module."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            here = room_of(module)
            if here is None:
                found.append(f"{path.relative_to(root)}: module {module} is on no floor (add its room to FLOORS)")
                continue
            tree = ast.parse(path.read_text(), str(path))
            for line, target in imported_modules(tree, module, path.name == "__init__.py", root):
                if target.split(".")[0] not in PACKAGES:
                    continue  # not ours
                there = room_of(target)
                if there is None:
                    found.append(f"{path.relative_to(root)}:{line}: {module} imports {target}, which is on no floor")
                elif there != here and FLOORS[there] >= FLOORS[here]:
                    kind = "a peer room" if FLOORS[there] == FLOORS[here] else "a higher floor"
                    found.append(f"{path.relative_to(root)}:{line}: {module} (floor {here}) imports {target} "
                                 f"from {kind} ({there})")
    return found


def test_no_module_imports_from_a_higher_floor_or_a_peer_room():
    found = violations()
    assert not found, "imports against the floors:\n" + "\n".join(found)


def test_the_check_names_a_planted_violation(tmp_path):
    """The rule itself, on a small tree: an engine module importing the bench (top level and inside a
    function), a bench module importing serve, the kernels importing the model, and a module on no
    floor are each reported; imports down the floors and within a room are not."""
    files = {
        "lp_jax/__init__.py": "from lp_jax.llm import LLM\n",
        "lp_jax/llm.py": "from lp_jax.engine.engine import Engine\n",
        "lp_jax/engine/__init__.py": "",
        "lp_jax/engine/engine.py": "import numpy\nfrom lp_jax.engine import kv_cache\nfrom . import kv_cache\n"
                                   "from lp_jax.bench.metrics import latencies\n",
        "lp_jax/engine/kv_cache.py": "def f():\n    import lp_jax\n    from ..model import spec\n",
        "lp_jax/model/__init__.py": "",
        "lp_jax/model/spec.py": "from pallas_kernels.dispatch import moe\n",
        "lp_jax/bench/__init__.py": "",
        "lp_jax/bench/metrics.py": "from lp_jax import LLM\nfrom lp_jax.serve import app\n",
        "lp_jax/serve/__init__.py": "",
        "lp_jax/serve/app.py": "",
        "lp_jax/wing.py": "",
        "pallas_kernels/__init__.py": "",
        "pallas_kernels/dispatch.py": "from lp_jax.model.spec import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(tmp_path)
    assert found == [
        "lp_jax/bench/metrics.py:2: lp_jax.bench.metrics (floor lp_jax.bench) imports lp_jax.serve.app from a peer "
        "room (lp_jax.serve)",
        "lp_jax/engine/engine.py:4: lp_jax.engine.engine (floor lp_jax.engine) imports lp_jax.bench.metrics from a "
        "higher floor (lp_jax.bench)",
        "lp_jax/engine/kv_cache.py:2: lp_jax.engine.kv_cache (floor lp_jax.engine) imports lp_jax from a higher "
        "floor (lp_jax)",
        "lp_jax/wing.py: module lp_jax.wing is on no floor (add its room to FLOORS)",
        "pallas_kernels/dispatch.py:1: pallas_kernels.dispatch (floor pallas_kernels) imports lp_jax.model.spec "
        "from a higher floor (lp_jax.model)",
    ], found
