"""Import structure of expkit and its Hydra plugins, read statically (ast): no module imports itself
back, counting imports inside functions too (they hide a cycle, not remove it); dependencies run one
way (the plugins and the command line sit on top of the core, which imports neither); and the sweep
tables do not pay for plotting (importing expkit.report.aggregate must not load matplotlib)."""
import ast
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "expkit"
PLUGINS = ROOT / "hydra_plugins"
REPORT = "expkit.report"
CORE_MUST_NOT_IMPORT = ("expkit.cli", "expkit.api", "expkit.__main__", "hydra_plugins")  # the layers on top


def module_names(*packages):
    """{dotted module name: file} of every module in the packages (a package is its __init__.py)."""
    out = {}
    for package in packages or (PACKAGE,):
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
        # `from pkg import sub` imports the submodule pkg.sub, and pkg itself (its __init__ runs first);
        # `from mod import name` imports mod
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else _resolve(base, modules)
                for a in node.names] + [_resolve(base, modules)]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name in ("__import__", "import_module"):  # an import by a literal name is an import too
            return [_resolve(node.args[0].value, modules)]
    return []


def import_graph(*packages):
    """{module: {modules of ours it imports}} over every module of the packages. A module's own
    packages are not counted (Python has them imported before the module runs, not through it)."""
    modules = module_names(*packages)
    graph = {}
    for name, f in modules.items():
        tree = ast.parse(f.read_text(), str(f))
        edges = set()
        for node in ast.walk(tree):
            edges.update(_targets(node, name, f.name == "__init__.py", modules))
        edges.discard(None)
        edges.discard(name)
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
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
    # from outside a package, `from pkg import sub` runs pkg's __init__ too: an import of pkg
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "x.py").write_text("def f():\n    from expkit import c\n")
    (pkg / "__init__.py").write_text("def run():\n    from plug.x import f\n")
    g = import_graph(pkg, tmp_path / "plug")
    assert g["plug.x"] == {"expkit.c", "expkit"} and g["expkit"] == {"plug.x"}
    assert ["expkit", "plug.x", "expkit"] in [c for c, _ in cycles(g)]


def test_report_modules_import_one_way():
    found = [c for c in cycles(import_graph()) if _in_report(c)]
    assert not found, f"import cycles through {REPORT} (imports inside functions count):\n{_show(found)}"


def test_rest_of_expkit_has_no_import_cycle():
    found = [c for c in cycles(import_graph()) if not _in_report(c)]
    assert not found, f"import cycles in expkit outside report/ (imports inside functions count):\n{_show(found)}"


def test_expkit_and_its_plugins_have_no_import_cycle():
    """The whole project: expkit and hydra_plugins together, imports inside functions included; and,
    where the shared checker is there (../shared/tools/import_cycles.py), it finds none either."""
    found = cycles(import_graph(PACKAGE, PLUGINS))
    assert not found, f"import cycles in expkit + hydra_plugins (imports inside functions count):\n{_show(found)}"
    tool = ROOT.parent / "shared" / "tools" / "import_cycles.py"
    if tool.is_file():
        r = subprocess.run([sys.executable, str(tool), str(ROOT), "expkit", "hydra_plugins"], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_the_core_imports_neither_the_plugins_nor_the_command_line():
    """Dependencies run one way: hydra_plugins and the entrypoints (cli, api, __main__) import the core
    (runner, trainers, report, ...), never the other way, not even inside a function. The package's
    own __init__ (expkit.run/sweep/load, the public API) is an entrypoint too."""
    graph = import_graph(PACKAGE, PLUGINS)
    top = [m for m in graph if m == "expkit" or m.startswith(CORE_MUST_NOT_IMPORT)]
    bad = {m: sorted(d for d in deps if d in top) for m, deps in graph.items() if m not in top}
    assert not any(bad.values()), {m: d for m, d in bad.items() if d}


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
