"""The house rules, checked from the source: import cycles, run-time patching sites, file sizes.

    python tools/house_check.py [ROOT]      # prints a report; exit 1 when a rule is broken

- Import cycles between modules of `nnx/` and `kernels/` (installed as `nnx.kernels`), counting
  every import statement wherever it sits (module level, inside functions, under TYPE_CHECKING).
- Run-time patching: `setattr(...)` calls, assignments to `__class__`, and attribute assignments
  whose value is a lambda or a function defined on the spot. Sites that run once while a class
  is being defined (a class decorator) are listed in ALLOWED with the reason.
- Library modules that import CLI code (`nnx.cli`, `nnx.commands`).
- Source files over MAX_LINES lines.

tests/test_house.py runs the same checks in CI.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

MAX_LINES = 600
PACKAGES = {"nnx": "nnx", "kernels": "nnx.kernels"}  # folder -> import name
# Assignments to these are Python's own hook points, not patching of nnx objects. `sys.exit`:
# under mpiexec a rank that exits non-zero must abort the job (or the others wait in a
# collective forever), and Python has no hook that sees the exit code; see
# nnx/distributed/launch.py.
HOOK_TARGETS = {"sys.excepthook", "threading.excepthook", "sys.exit"}
# (file, function) pairs where setattr runs at class-definition time, not on live objects.
ALLOWED = {
    ("kernels/cupy_device.py", "scope_inherited"):
        "class decorator: wraps CupyOps's inherited kernels once, when the class is defined",
}


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import nnx.a.b` depends on nnx.a.b (or its package)
                    t = t.rpartition(".")[0]
                if t and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)  # importing one's own parent package is not a cycle
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


class _Patching(ast.NodeVisitor):
    def __init__(self, rel):
        self.rel, self.sites, self.func = rel, [], None
        self.local_defs: list[set] = [set()]

    def visit_FunctionDef(self, node):
        outer = self.func
        self.func = node.name
        self.local_defs[-1].add(node.name)
        self.local_defs.append(set())
        self.generic_visit(node)
        self.local_defs.pop()
        self.func = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def _site(self, node, what):
        if (self.rel, self.func) not in ALLOWED:
            self.sites.append(f"{self.rel}:{node.lineno}: {what}")

    def visit_Call(self, node):
        if isinstance(node.func, ast.Name) and node.func.id == "setattr":
            self._site(node, "setattr(...)")
        self.generic_visit(node)

    def visit_Assign(self, node):
        for t in node.targets:
            if isinstance(t, ast.Attribute):
                if t.attr == "__class__":
                    self._site(node, "assignment to __class__")
                elif isinstance(t.value, ast.Name) and f"{t.value.id}.{t.attr}" in HOOK_TARGETS:
                    pass
                elif not (isinstance(t.value, ast.Name) and t.value.id in ("self", "cls")):
                    v = node.value
                    local = isinstance(v, ast.Name) and any(v.id in s for s in self.local_defs)
                    if isinstance(v, ast.Lambda) or local:
                        self._site(node, f"function assigned to .{t.attr}")
        self.generic_visit(node)


def cli_imports(graph: dict[str, set[str]]) -> list[str]:
    """Library modules that import CLI code (nnx.cli, nnx.commands.*)."""
    def is_cli(m):
        return m == "nnx.cli" or m == "nnx.commands" or m.startswith("nnx.commands.")

    return sorted(f"{m} imports {t}" for m, ts in graph.items() if not is_cli(m)
                  for t in ts if is_cli(t))


def patching_sites(root: Path) -> list[str]:
    out = []
    for path in modules(root).values():
        rel = str(path.relative_to(root))
        v = _Patching(rel)
        v.visit(ast.parse(path.read_text(), str(path)))
        out += v.sites
    return out


def large_files(root: Path, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    sizes = [(str(p.relative_to(root)), len(p.read_text().splitlines()))
             for p in modules(root).values()]
    return sorted([s for s in sizes if s[1] > limit], key=lambda s: -s[1])


def largest(root: Path) -> tuple[str, int]:
    return max(((str(p.relative_to(root)), len(p.read_text().splitlines()))
                for p in modules(root).values()), key=lambda s: s[1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1])
    graph = import_graph(root)
    cyc = cycles(graph)
    cli = cli_imports(graph)
    sites = patching_sites(root)
    print(f"library modules importing CLI code: {len(cli)}")
    for c in cli:
        print("  " + c)
    big = large_files(root)
    name, n = largest(root)
    print(f"import cycles: {len(cyc)}")
    for c in cyc:
        print("  " + " <-> ".join(c))
    print(f"run-time patching sites: {len(sites)}")
    for s in sites:
        print("  " + s)
    print(f"files over {MAX_LINES} lines: {len(big)}; largest: {name} ({n} lines)")
    for f, k in big:
        print(f"  {f}: {k}")
    return 1 if (cyc or sites or big or cli) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
