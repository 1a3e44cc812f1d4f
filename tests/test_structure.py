"""The package's shape, read from its source: no import cycle, data/ below everything else, and a README
that names every module."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "alexnet"
# What data/ may use outside itself: errors, the C kernels, atomic file writes.
DATA_MAY_IMPORT = {"alexnet.errors", "alexnet.choices", "alexnet.kernels", "alexnet.files", "alexnet.cores",
                   "alexnet.progress", "alexnet.orphans"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, at any depth (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from alexnet import kernels` imports the module alexnet.kernels, not just the package
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found - {module_name(path)}


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_the_package_has_no_import_cycle():
    # Depth-first search; a back edge is a cycle, reported as the modules on it.
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_data_imports_nothing_above_it():
    for name, deps in GRAPH.items():
        if name.startswith("alexnet.data."):
            above = {d for d in deps if not d.startswith("alexnet.data") and d not in DATA_MAY_IMPORT
                     and not d.startswith("alexnet.kernels")}
            assert not above, f"{name} imports {sorted(above)}"


def test_commands_open_data_only_through_the_door():
    # Outside data/, nothing decides between kinds of data: no one but sources.py opens a kind directly.
    openers = {"open_prepared", "open_folders", "discover", "is_prepared", "PreparedImages", "FixedSizeImages"}
    for name, path in MODULES.items():
        if name.startswith("alexnet.data"):
            continue
        used = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)} | \
               {a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not used & openers, f"{name} opens data by kind: {sorted(used & openers)}"


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    named = set(re.findall(r"[\w]+\.py", layout))
    missing = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                     if p.name != "__init__.py" and p.name not in named)
    assert not missing, f"README's Layout does not name: {', '.join(missing)}"
