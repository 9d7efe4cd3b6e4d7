"""Import structure of the expkit package, read statically (ast): no module imports itself back,
counting imports inside functions too (they hide a cycle, not remove it); and the sweep tables do
not pay for plotting (importing expkit.report.aggregate must not load matplotlib).

The report/ part is strict. Cycles elsewhere in expkit are reported but expected to fail for now
(another change removes them)."""
import ast
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "expkit"
REPORT = "expkit.report"


def module_names(package=PACKAGE):
    """{dotted module name: file} of every module in the package (a package is its __init__.py)."""
    out = {}
    for f in sorted(package.rglob("*.py")):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _resolve(name, modules):
    """The module a dotted name imports: its longest prefix that is a module of ours (None: not ours)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def _targets(node, module, is_package, modules):
    """The modules of ours one import statement (at any depth, in a function too) imports."""
    if isinstance(node, ast.Import):
        return [_resolve(a.name, modules) for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            pkg = module.split(".") if is_package else module.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else _resolve(base, modules)
                for a in node.names]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name in ("__import__", "import_module"):  # an import by a literal name is an import too
            return [_resolve(node.args[0].value, modules)]
    return []


def import_graph(package=PACKAGE):
    """{module: {modules of ours it imports}} over every module of the package."""
    modules = module_names(package)
    graph = {}
    for name, f in modules.items():
        tree = ast.parse(f.read_text(), str(f))
        edges = set()
        for node in ast.walk(tree):
            edges.update(_targets(node, name, f.name == "__init__.py", modules))
        edges.discard(None)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph):
    """Per strongly connected component with more than one module (Tarjan): (one cycle in it
    [a, b, ..., a], the component's modules)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
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
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_cycle_in(comp, graph), comp) for comp in comps]


def _cycle_in(comp, graph):
    """A concrete cycle through the component's first module (a shortest way back to it)."""
    start = min(comp)
    paths, seen = [[start]], {start}
    while paths:
        nxt = []
        for path in paths:
            for w in sorted(graph[path[-1]] & comp):
                if w == start:
                    return path + [start]
                if w not in seen:
                    seen.add(w)
                    nxt.append(path + [w])
        paths = nxt
    raise AssertionError(f"no cycle in component {sorted(comp)}")


def _show(found):
    return "\n".join(f"  {' -> '.join(c)}   (all of these import each other: {', '.join(sorted(comp))})"
                     for c, comp in found)


def _in_report(found):
    return any(m == REPORT or m.startswith(REPORT + ".") for m in found[1])


def test_graph_sees_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "expkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from expkit.sub.b import x\n    return x\n")
    (pkg / "sub" / "b.py").write_text("x = 1\ndef g():\n    import expkit.sub.a\n"
                                      "__import__('expkit.c', fromlist=['y'])\n")
    (pkg / "c.py").write_text("from .sub import a\nfrom expkit import sub\n")
    g = import_graph(pkg)
    assert g == {"expkit": set(), "expkit.sub": {"expkit.sub.b"}, "expkit.sub.a": {"expkit.sub.b"},
                 "expkit.sub.b": {"expkit.sub.a", "expkit.c"}, "expkit.c": {"expkit.sub.a", "expkit.sub"}}
    assert cycles(g) == [(["expkit.c", "expkit.sub", "expkit.sub.b", "expkit.c"],
                          {"expkit.c", "expkit.sub", "expkit.sub.a", "expkit.sub.b"})]


def test_report_modules_import_one_way():
    found = [c for c in cycles(import_graph()) if _in_report(c)]
    assert not found, f"import cycles through {REPORT} (imports inside functions count):\n{_show(found)}"


def test_rest_of_expkit_has_no_import_cycle():
    found = [c for c in cycles(import_graph()) if not _in_report(c)]
    assert not found, f"import cycles in expkit outside report/ (imports inside functions count):\n{_show(found)}"


def test_tables_do_not_import_matplotlib():
    code = ("import sys, expkit.report.aggregate; "
            "assert 'matplotlib' not in sys.modules, 'importing expkit.report.aggregate loaded matplotlib'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_data_never_imports_models_or_trainers():
    """Data flows one way: config -> data -> model -> trainer. The model's input transform and any
    frozen-feature cache are chosen in expkit/runner.py, in plain sight."""
    graph = import_graph()
    below = {m: deps for m, deps in graph.items() if m.startswith("expkit.data")}
    bad = {m: sorted(d for d in deps if d.startswith(("expkit.models", "expkit.trainers", "expkit.features",
                                                         "expkit.runner")))
           for m, deps in below.items()}
    assert not any(bad.values()), bad
