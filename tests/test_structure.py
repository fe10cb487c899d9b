"""The shape of the package: no import cycles, read from the modules' own import
statements (function-level ones included, which a cycle hides behind as easily)."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "lth_keras")


def _modules():
    """{module name: file} of every module of lth_keras."""
    found = {}
    root = os.path.dirname(PACKAGE)
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def import_graph():
    """{module: {modules of lth_keras it imports}}: `import a.b` and `from a import b` name
    a.b when it is a module, else a (an attribute of a). Packages that Python runs on the
    way to a submodule are not edges: only what a statement names."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_holds_function_level_imports():
    graph = import_graph()
    # Made inside functions: the grid's in-process runs, the one way into the protocols, and
    # the trainer of a level.
    assert "lth_keras.runner" in graph["lth_keras.grid"]
    assert "lth_keras.lottery.tickets" in graph["lth_keras.runner"]
    assert "lth_keras.training" in graph["lth_keras.lottery.levels"]
    assert "lth_keras.lottery.directory" in graph["lth_keras.lottery.fine_tuning"]


def test_lth_keras_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_errors_and_settings_are_the_ground_floor():
    # Every module may raise a UserError, read points of training or read settings: none
    # of them may import back.
    graph = import_graph()
    assert graph["lth_keras.errors"] == set() and graph["lth_keras.steps"] == set()
    assert graph["lth_keras.settings"] == {"lth_keras.errors", "lth_keras.steps"}


def _source_files():
    """{name: path} of every module of lth_keras and every script of tools/."""
    found = dict(_modules())
    tools = os.path.join(os.path.dirname(PACKAGE), "tools")
    for directory, _, files in os.walk(tools):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                found[os.path.relpath(path, os.path.dirname(PACKAGE))] = path
    return found


def config_reads(tree):
    """Lines that read a run's config.json: a call of a `.config()` method, or read_json of
    something that names a config path."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "config" and not node.args:
            lines.append(node.lineno)
        elif (isinstance(func, (ast.Attribute, ast.Name))
              and getattr(func, "attr", getattr(func, "id", None)) == "read_json"
              and "config" in ast.dump(node.args[0]).lower()):
            lines.append(node.lineno)
    return lines


def test_config_json_is_read_in_the_run_directory_module_only():
    # Everything else asks a run for its typed Record (directory.RunDirectory.record).
    offenders = {}
    for name, path in _source_files().items():
        if name == "lth_keras.lottery.directory":
            continue
        with open(path) as f:
            lines = config_reads(ast.parse(f.read(), path))
        if lines:
            offenders[name] = lines
    assert offenders == {}
    # The check finds what it looks for.
    assert sorted(config_reads(ast.parse("run.config()['kind']\nartifacts.read_json(r.config_path)"))) \
        == [1, 2]


def test_one_place_maps_a_protocol_kind_to_its_function():
    # The runner calls the three protocols; no other module of lth_keras does.
    callers = {}
    for name, path in _modules().items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("find_tickets", "transfer", "stability")
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in ("tickets", "fine_tuning", "instability")):
                callers.setdefault(name, []).append(node.func.attr)
    assert set(callers) == {"lth_keras.runner"}
    assert sorted(callers["lth_keras.runner"]) == ["find_tickets", "stability", "transfer"]
