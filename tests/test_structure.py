"""The package's structure, checked from its source: imports run down the layers, no module imports another's
private names or the package root, and every hook is added in `collapse_lab/hooks.py`."""
import ast, re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/"collapse_lab"
MODULES = sorted(p for p in PKG.glob("*.py") if p.name not in ("__init__.py", "_modidx.py"))

def _imports(path:Path):
    "(module imported from, names) for every `from .x import ...` / `import collapse_lab...` in `path`, at any depth."
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("collapse_lab")):
            yield (node.module or "").removeprefix("collapse_lab.").removeprefix("collapse_lab"), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "collapse_lab": yield a.name, ["*"]

def test_no_private_names_across_modules():
    bad = [f"{p.name}: from {mod} import {n}" for p in MODULES for mod, names in _imports(p) for n in names
           if n.startswith("_")]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)

def test_nothing_imports_the_package_root():
    bad = [f"{p.name}: {mod or 'collapse_lab'}" for p in MODULES for mod, _ in _imports(p) if mod in ("", "collapse_lab")]
    assert not bad, f"modules importing the package root (it pulls in every widget): {bad}"

def test_hooks_are_added_in_hooks_only():
    pattern = re.compile(r"\.(add_hook|register_forward_hook|register_forward_pre_hook)\(")
    where = sorted(p.name for p in MODULES if pattern.search(p.read_text()))
    assert where == ["hooks.py"], f"hooks are added outside hooks.py: {where}"

def test_imports_run_down_the_layers():
    "The notebook order is the layer order: a module imports only modules of earlier notebooks."
    order = {}
    for nb in sorted((PKG.parent/"nbs").glob("*.ipynb")):
        m = re.search(r'#\|\s*default_exp\s+(\w+)', nb.read_text())
        if m: order[m[1]] = len(order)
    up = [f"{p.stem} -> {mod}" for p in MODULES for mod, _ in _imports(p)
          if mod.split(".")[0] in order and order[mod.split(".")[0]] > order[p.stem]]
    assert not up, f"imports running back up the layers: {up}"
