"""The house rules of inat/ and jobs/ (docs/architecture.md), checked on their source with `ast`.

Every import counts, at module level and inside functions: relative imports are resolved, and
`from pkg import name` is an import of the module pkg.name when there is one, else of pkg (a
package's `__init__`). On the graph of our own modules:

  (a) no import cycle;
  (b) no module uses another module's private name (`from .m import _x`, `m._x`, `obj._x` where
      `_x` is defined in another of our modules and not in this one);
  (c) `inat` never imports `jobs`;
  (d) an import inside a function is allowed only of a heavy module, one that at module level,
      itself or through what it imports, loads one of HEAVY; it says why in a `# lazy:` comment.
      A package `__init__` is never heavy, and neither is what `inat-jobs --help` imports;
  (e) no module is longer than MAX_LINES lines.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("inat", "jobs")
# What `inat-jobs --help` must not pay for. numpy and PIL are here too: numpy alone takes longer
# to import than everything --help loads. optuna_dashboard loads Optuna, and is an extra; wandb_osh:
# its hooks import W&B; SQLAlchemy takes about 150 ms, and only a --storage URL needs it.
HEAVY = ("tensorflow", "keras", "jax", "matplotlib", "optuna", "optuna_dashboard", "wandb", "wandb_osh", "submitit",
         "numpy", "PIL", "sqlalchemy")
MAX_LINES = 330


@dataclass
class Import:
    target: str  # an absolute module name: one of ours, or a third-party/stdlib one
    names: tuple[str, ...]  # what `from target import ...` took; () for a module import
    line: int
    in_function: bool
    lazy_comment: bool


@dataclass
class Module:
    name: str
    path: Path
    rel: str
    is_package: bool
    tree: ast.Module
    lines: list[str]
    imports: list[Import] = field(default_factory=list)
    private_defs: set[str] = field(default_factory=set)  # _names defined at module or class level


def load(root: Path, packages=PACKAGES) -> dict[str, Module]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            text = path.read_text(encoding="utf-8")
            modules[".".join(parts)] = Module(".".join(parts), path, str(path.relative_to(root)), is_package,
                                              ast.parse(text, str(path)), text.splitlines())
    for mod in modules.values():
        mod.imports = list(_imports(mod, modules))
        mod.private_defs = _private_defs(mod.tree)
    return modules


def _from_base(mod: Module, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = (mod.name if mod.is_package else mod.name.rpartition(".")[0]).split(".")
    return ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))


def _imports(mod: Module, modules: dict[str, Module]):
    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                lazy = any("# lazy:" in mod.lines[i - 1] for i in (child.lineno, child.lineno - 1) if i >= 1)
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        yield Import(alias.name, (), child.lineno, inside, lazy)
                else:
                    base = _from_base(mod, child)
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        if sub in modules:
                            yield Import(sub, (), child.lineno, inside, lazy)
                        else:
                            yield Import(base, (alias.name,), child.lineno, inside, lazy)
            yield from visit(child, inside)

    yield from visit(mod.tree, False)


def _private_defs(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    found.add(target.id)
    return {n for n in found if n.startswith("_") and not n.startswith("__")}


def ours(name: str, modules: dict[str, Module]) -> str | None:
    """The module of ours that importing `name` means (a name inside one of ours maps to it)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for mod in modules.values():
        for imp in mod.imports:
            target = ours(imp.target, modules)
            if target is not None and target != mod.name:
                edges[mod.name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path that comes back to its start) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strongconnect(w)
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
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    found = []
    for component in components:
        start, members = component[0], set(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until a step returns to a module on the path
            nxt = sorted(w for w in edges[path[-1]] if w in members)
            back = [w for w in nxt if w in seen]
            if back:
                found.append(path[path.index(back[0]):] + [back[0]])
                break
            path.append(nxt[0])
            seen.add(nxt[0])
    return found


def heavy_modules(modules: dict[str, Module]) -> dict[str, str]:
    """{module of ours: why it is heavy} for every module whose import loads one of HEAVY."""
    why: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for mod in modules.values():
            if mod.name in why:
                continue
            for imp in mod.imports:
                if imp.in_function:
                    continue
                target = ours(imp.target, modules)
                parents = [target.rsplit(".", k)[0] for k in range(target.count(".") + 1)] if target else []
                reason = (f"imports {imp.target}" if imp.target.split(".")[0] in HEAVY else
                          next((f"imports {p} ({why[p]})" for p in parents if p in why), None))
                if reason:
                    why[mod.name] = reason
                    changed = True
                    break
    return why


def _bindings(mod: Module, modules: dict[str, Module]) -> dict[str, str]:
    """{local name: our module} for every name an import binds to one of our modules."""
    bound = {}
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and ours(alias.name, modules) == alias.name:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(mod, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def _module_of(node: ast.expr, bound: dict[str, str], modules: dict[str, Module]) -> str | None:
    """The module of ours that `node` names: a bound name, or a dotted chain such as inat.train."""
    chain = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    dotted = ".".join([bound.get(node.id, node.id), *reversed(chain)])
    return dotted if dotted in modules and (node.id in bound or node.id in PACKAGES) else None


def violations(modules: dict[str, Module]) -> dict[str, list[str]]:
    heavy = heavy_modules(modules)
    found: dict[str, list[str]] = {"cycles": [], "private": [], "inat->jobs": [], "lazy": [], "size": []}
    edges = graph(modules)
    for cycle in cycles(edges):
        found["cycles"].append(" -> ".join(cycle))
    owners: dict[str, set[str]] = {}
    for mod in modules.values():
        for name in mod.private_defs:
            owners.setdefault(name, set()).add(mod.name)
    for mod in modules.values():
        where = mod.rel
        for imp in mod.imports:
            target = ours(imp.target, modules)
            if target is None:
                if mod.name.startswith("inat") and imp.target.split(".")[0] == "jobs":
                    found["inat->jobs"].append(f"{where}:{imp.line} imports {imp.target}")
                if imp.in_function and imp.target.split(".")[0] not in HEAVY:
                    found["lazy"].append(f"{where}:{imp.line} imports {imp.target} inside a function; "
                                         "it is not heavy: import it at the top")
                elif imp.in_function and not imp.lazy_comment:
                    found["lazy"].append(f"{where}:{imp.line} imports {imp.target} inside a function "
                                         "without a `# lazy: why` comment")
                continue
            if mod.name.startswith("inat") and target.startswith("jobs"):
                found["inat->jobs"].append(f"{where}:{imp.line} imports {target}")
            for name in imp.names:
                if name.startswith("_") and not name.startswith("__") and target != mod.name:
                    found["private"].append(f"{where}:{imp.line} imports {target}.{name}")
            if imp.in_function:
                if target not in heavy:
                    found["lazy"].append(f"{where}:{imp.line} imports {target} inside a function; it is "
                                         "light (nothing heavy at its module level): import it at the top")
                elif not imp.lazy_comment:
                    found["lazy"].append(f"{where}:{imp.line} imports {target} inside a function without "
                                         f"a `# lazy: why` comment (it is heavy: {heavy[target]})")
        bound = _bindings(mod, modules)
        for node in ast.walk(mod.tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            value, owner = node.value, _module_of(node.value, bound, modules)
            if owner is not None:
                if owner != mod.name:
                    found["private"].append(f"{where}:{node.lineno} uses {owner}.{node.attr}")
            elif isinstance(value, ast.Name) and value.id in ("self", "cls"):
                continue
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
                continue
            elif node.attr not in mod.private_defs and owners.get(node.attr, set()) - {mod.name}:
                others = ", ".join(sorted(owners[node.attr]))
                found["private"].append(f"{where}:{node.lineno} uses .{node.attr}, private to {others}")
        if mod.is_package and mod.name in heavy:
            found["lazy"].append(f"{where}: a package __init__ must stay light, but it {heavy[mod.name]}")
        if len(mod.lines) > MAX_LINES:
            found["size"].append(f"{where}: {len(mod.lines)} lines (at most {MAX_LINES})")
    return {k: list(dict.fromkeys(v)) for k, v in found.items() if v}


def report(found: dict[str, list[str]], modules: dict[str, Module]) -> str:
    sizes = "\n".join(f"  {len(m.lines):4d} {m.rel}" for m in sorted(modules.values(), key=lambda m: -len(m.lines)))
    parts = [f"{kind}:\n" + "\n".join(f"  {v}" for v in items) for kind, items in found.items()]
    return "\n".join(parts) + (f"\nmodule sizes:\n{sizes}" if "size" in found else "")


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load(REPO)


@pytest.mark.parametrize("kind", ["cycles", "private", "inat->jobs", "lazy", "size"])
def test_house_rule(modules, kind):
    found = violations(modules)
    assert kind not in found, report({kind: found[kind]}, modules)


def test_help_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "jobs", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not sorted(m for m in loaded if m.split(".")[0] in HEAVY)


def test_the_checks_catch_what_they_should(tmp_path):
    """Plant one of each violation in a small package and see every check fire."""
    pkg = tmp_path / "inat"
    for sub in ("sub", "fat"):
        (pkg / sub).mkdir(parents=True)
    files = {
        "__init__.py": "",
        "fat/__init__.py": "from .. import heavy\n",  # a package __init__ that is heavy
        "a.py": "from . import b\n\ndef _helper():\n    pass\n",
        "b.py": "from .a import _helper\n\n\ndef f():\n    from . import a  # lazy: a cycle back\n"
                "    import json\n    return a, json\n",
        "heavy.py": "import numpy\n",
        "c.py": "from . import heavy\nfrom .sub import d\n\n\ndef g(x):\n    from .heavy import numpy\n"
                "    return x._helper, d._y\n",
        "sub/__init__.py": "",
        "sub/d.py": "import jobs.cli\n_y = 1\n" + "\n" * MAX_LINES,
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    found = violations(load(tmp_path, packages=("inat",)))
    assert found["cycles"] == ["inat.a -> inat.b -> inat.a"]
    assert sorted(found["private"]) == ["inat/b.py:1 imports inat.a._helper",
                                        "inat/c.py:7 uses ._helper, private to inat.a",
                                        "inat/c.py:7 uses inat.sub.d._y"]
    assert found["inat->jobs"] == ["inat/sub/d.py:1 imports jobs.cli"]
    lazy = "\n".join(found["lazy"])
    assert "inat/b.py:5 imports inat.a inside a function; it is light" in lazy
    assert "inat/b.py:6 imports json inside a function" in lazy
    assert "inat/c.py:6 imports inat.heavy inside a function without a `# lazy: why` comment" in lazy
    assert "inat/fat/__init__.py: a package __init__ must stay light" in lazy
    assert found["size"] == [f"inat/sub/d.py: {MAX_LINES + 2} lines (at most {MAX_LINES})"]
    assert re.search(r"^  +\d+ inat/sub/d\.py$", report(found, load(tmp_path, packages=("inat",))), re.M)


def mapped_files(doc: str) -> set[str]:
    """The modules the map in docs/architecture.md names: under `inat/` or `jobs/`, a line `  sub/ ...`
    opens a subpackage that the lines indented below it continue; any other line names top-level files."""
    block = doc.split("## What each part owns", 1)[1].split("```")[1]
    named, top, sub = set(), None, None
    for line in block.splitlines():
        if re.match(r"^(inat|jobs)/", line):
            top, sub = line.split("/")[0], None
            continue
        opened = re.match(r"^  (\w+)/\s", line)
        if opened:
            sub = opened.group(1)
        elif re.match(r"^  \S", line):
            sub = None
        for name in re.findall(r"\b(\w+\.py)\b", line):
            named.add(f"{top}/{sub + '/' if sub else ''}{name}")
    return named


def test_the_architecture_map_names_every_module_and_only_real_ones():
    real = {str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py")}
    named = mapped_files((REPO / "docs" / "architecture.md").read_text())
    assert not sorted(named - real), "docs/architecture.md names files that do not exist"
    assert not sorted(real - named), "modules missing from docs/architecture.md's map"


def test_the_map_reader_follows_subpackages():
    doc = "## What each part owns\n\n```\ninat/\n  a.py b.py   x\n  sub/   c.py   y\n         d.py   z\n  e.py   w\n```\n"
    assert mapped_files(doc) == {"inat/a.py", "inat/b.py", "inat/sub/c.py", "inat/sub/d.py", "inat/e.py"}
