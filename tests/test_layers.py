"""Three layers, each built on the ones below: the library (``nasty`` outside ``nasty/app``), then
``attacks``, then the app (``nasty/app``: the CLI, the demo). No module imports a layer above its own."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what a module of each layer must never import (a name, or anything under it)
FORBIDDEN = {"library": ("attacks", "nasty.app"), "attacks": ("nasty.app",), "app": ()}


def layer(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).parts
    if parts[0] == "attacks":
        return "attacks"
    # ``python -m nasty`` must find nasty/__main__.py: it is the app's entry point, as the console script is
    return "app" if parts[:2] in (("nasty", "app"), ("nasty", "__main__.py")) else "library"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in the file, relative ones resolved; ``from a import b``
    gives ``a.b`` too (``b`` may be a module)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))  # importlib.import_module("attacks...")
    return found


def violations(paths, root: Path = ROOT) -> list[str]:
    """One line per import statement that reaches above its module's layer."""
    bad = {}
    for path in paths:
        for line, mod in imported(path, root):
            where = f"{path.relative_to(root)}:{line}"
            if where not in bad and any(mod == above or mod.startswith(above + ".") for above in FORBIDDEN[layer(path, root)]):
                bad[where] = f"{where} ({layer(path, root)}) imports {mod}"
    return list(bad.values())


def sources():
    return sorted([*ROOT.glob("nasty/**/*.py"), *ROOT.glob("attacks/**/*.py")])


def test_no_module_imports_a_layer_above_its_own():
    paths = sources()
    assert {layer(p) for p in paths} == {"library", "attacks", "app"}
    assert violations(paths) == []


@pytest.mark.parametrize("where, line", [
    ("nasty/planted.py", "from attacks.audit import audit"),
    ("nasty/planted.py", "import attacks"),
    ("nasty/models/planted.py", "from ...attacks import kd"),
    ("nasty/planted.py", "from .app import cli"),
    ("nasty/planted.py", "from nasty import app"),
    ("nasty/planted.py", "def f():\n    from .app.cli import main"),
    ("nasty/planted.py", "import importlib\nimportlib.import_module('attacks.audit')"),
    ("attacks/planted.py", "from nasty.app.demo import run_demo"),
    ("attacks/planted.py", "from nasty import app"),
])
def test_a_planted_import_across_the_layers_is_caught(tmp_path, where, line):
    """The check can fail: one bad import in a module of a tree like ours."""
    planted = tmp_path / where
    planted.parent.mkdir(parents=True)
    planted.write_text(line + "\n")
    assert len(violations([planted], tmp_path)) == 1, line
    fine = tmp_path / "nasty" / "app" / "fine.py"  # the app may import both
    fine.parent.mkdir(parents=True, exist_ok=True)
    fine.write_text("import attacks\nfrom nasty.app import cli_errors\nfrom .. import app\n")
    assert violations([fine], tmp_path) == []
