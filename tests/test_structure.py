"""The house rules the code is checked against: imports point down, never sideways between families."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trilemma"
FAMILIES = ("diffusion", "autoregressive", "gan")


def imported_modules(path: Path) -> set[str]:
    """Every trilemma module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trilemma"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("trilemma"))
    return names


def _family(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FAMILIES else None


@pytest.mark.parametrize("family", FAMILIES)
def test_no_family_imports_another(family):
    for path in (PACKAGE / family).rglob("*.py"):
        others = {m for m in imported_modules(path) if _family(m) not in (None, family)}
        assert not others, f"{path.relative_to(PACKAGE)} imports {sorted(others)}"


def test_shared_code_imports_no_family():
    # What the families share lives below them: the interface, the loop, data, text, first stages, Shapes, CLIP.
    shared = [PACKAGE / "model.py", PACKAGE / "registry.py", PACKAGE / "config.py", PACKAGE / "checkpoint.py"]
    for folder in ("train", "data", "text", "autoencoders", "shapes", "clip"):
        shared += (PACKAGE / folder).rglob("*.py")
    for path in shared:
        families = {m for m in imported_modules(path) if _family(m)}
        assert not families, f"{path.relative_to(PACKAGE)} imports {sorted(families)}"


def test_registry_names_every_model_class_by_path():
    from trilemma.registry import MODEL_CLASSES, model_class

    for name in MODEL_CLASSES:
        klass = model_class(name)
        assert klass.__name__ == name and klass.config_class is not None


# --- module names, imports and cycles ---------------------------------------------------------------------------------
def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(tree: ast.AST):
    """(node, module imported, names taken from it, whether inside a function) for every trilemma import."""
    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "trilemma":
                yield child, child.module, [a.name for a in child.names], in_function
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == "trilemma":
                        yield child, a.name, [], in_function
            yield from visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    yield from visit(tree, False)


def _targets(module: str, names: list[str]) -> set[str]:
    """The modules an import binds: `from trilemma.clip import clip` means the module trilemma.clip.clip."""
    subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}
    return subs | ({module} if len(subs) < len(names) or not names else set())


def private_names_used(path: Path) -> list[str]:
    """Another trilemma module's underscore names that `path` imports or reads as module attributes."""
    me, found = module_name(path), []
    tree = ast.parse(path.read_text())
    bound = {}  # local name -> the trilemma module it stands for
    for node, module, names, _ in _imports(tree):
        if isinstance(node, ast.ImportFrom):
            found += [f"from {module} import {n}" for n in names if _private(n) and module != me]
            bound.update({a.asname or a.name: f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES})
        else:
            bound.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                          for a in node.names if a.name.split(".")[0] == "trilemma"})
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, root = [node.attr], node.value
            while isinstance(root, ast.Attribute):
                chain.append(root.attr)
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                module = bound[root.id]  # walk down submodules (trilemma.clip.clip) to the name read from one
                for attr in reversed(chain):
                    if f"{module}.{attr}" not in MODULES:
                        if _private(attr) and module != me:
                            found.append(f"{module}.{attr}")
                        break
                    module = f"{module}.{attr}"
    return sorted(set(found))


# Known exceptions: none (a stale entry fails the test).
PRIVATE_NAMES_ALLOWED: set[tuple[str, str]] = set()  # none


def test_no_private_names_across_modules():
    # An underscore name is its module's own: another module that needs it gets a public name (or a shared home).
    used = {(module_name(p), f) for p in MODULES.values() for f in private_names_used(p)}
    offences = sorted(used - PRIVATE_NAMES_ALLOWED)
    assert not offences, "private names used across modules; make them public in their module: " + "; ".join(
        f"{m}: {f}" for m, f in offences)
    stale = sorted(PRIVATE_NAMES_ALLOWED - used)
    assert not stale, "gone; remove from PRIVATE_NAMES_ALLOWED: " + "; ".join(f"{m}: {f}" for m, f in stale)


def import_graph() -> dict[str, set[str]]:
    """Module -> the trilemma modules it imports, at the top of the file or inside a function."""
    graph = {}
    for name, path in MODULES.items():
        graph[name] = set()
        for _, module, names, _ in _imports(ast.parse(path.read_text())):
            graph[name] |= _targets(module, names) - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through each strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, groups = {}, {}, [], []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while not group or v not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for group in groups:  # the shortest way back to the group's first module, by breadth-first search inside it
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        while frontier:
            v = frontier.pop(0)
            for w in sorted(graph[v] & group):
                if w == start:
                    cycles.append(paths[v] + [start])
                    frontier = []
                    break
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    frontier.append(w)
    return sorted(cycles)


# Cycles allowed: none (a stale entry fails the test).
CYCLES_ALLOWED: list[set[str]] = []


def test_no_import_cycles():
    cycles = import_cycles(import_graph())
    refused = [c for c in cycles if set(c) not in CYCLES_ALLOWED]
    assert not refused, "import cycles (move what both modules need below them): " + "; ".join(" -> ".join(c) for c in refused)
    found = [set(c) for c in cycles]
    stale = [allowed for allowed in CYCLES_ALLOWED if allowed not in found]
    assert not stale, f"no longer a cycle; remove from CYCLES_ALLOWED: {stale}"


def test_import_cycles_are_found():
    # The check itself: a cycle two steps long and one three steps long are both named.
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "x": {"y"}, "y": {"z"}, "z": {"x"}}
    assert import_cycles(graph) == [["a", "b", "a"], ["x", "y", "z", "x"]]


# Imports inside functions hide a module's dependencies (and often a cycle). Where they stay, and why:
# - the entry points, trilemma/cli.py and trilemma/__init__.py (`python -m trilemma` runs the package first):
#   their lazy imports keep `trilemma --help` and `import trilemma` from loading torch;
# - trilemma/registry.py, which imports a model class by name (importlib) so that the base depends on no family.
LAZY_ENTRY_POINTS = {"trilemma", "trilemma.cli"}
DYNAMIC_IMPORTERS = {"trilemma.registry"}

# (module, what it imports inside a function) allowed beyond those: none. A stale entry fails the test.
IMPORTS_INSIDE_FUNCTIONS_ALLOWED: set[tuple[str, str]] = set()  # none


def imports_inside_functions(path: Path) -> set[str]:
    """The trilemma modules `path` imports inside a function, by statement or by importlib."""
    tree = ast.parse(path.read_text())
    found = {m for _, module, names, inside in _imports(tree) if inside for m in _targets(module, names)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module":
            found.add("importlib.import_module(...)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"):
            found.add(f"{node.func.id}(...)")
    return found


def test_no_imports_inside_functions():
    found = {(name, m) for name, path in MODULES.items() if name not in LAZY_ENTRY_POINTS
             for m in imports_inside_functions(path) if not (name in DYNAMIC_IMPORTERS and m.endswith("(...)"))}
    refused = sorted(found - IMPORTS_INSIDE_FUNCTIONS_ALLOWED)
    assert not refused, ("trilemma modules imported inside a function; import them at the top of the file (or, if that "
                         "makes a cycle, move what both need below them): " + "; ".join(f"{a} imports {b}" for a, b in refused))
    stale = sorted(IMPORTS_INSIDE_FUNCTIONS_ALLOWED - found)
    assert not stale, "no longer imported inside a function; remove from IMPORTS_INSIDE_FUNCTIONS_ALLOWED: " + "; ".join(
        f"{a} imports {b}" for a, b in stale)


# Shapes is a plugin: the benchmark's own package, its evaluation and the CLI's Shapes commands import it; the
# shared layers reach it only through the registries (a data type, a model class) by name.
SHAPES_USERS = {"eval/evaluate.py", "eval/folder.py", "eval/fidelity.py", "eval/hard_negatives.py", "cli.py"}


def test_only_the_shapes_benchmark_imports_shapes():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("shapes/") or rel in SHAPES_USERS:
            continue
        shapes = {m for _, module, names, _ in _imports(ast.parse(path.read_text())) for m in _targets(module, names)
                  if m == "trilemma.shapes" or m.startswith("trilemma.shapes.")}
        assert not shapes, f"{rel} imports {sorted(shapes)}; ask the data through trilemma.data.sources.DataSource"


def test_cli_imports_shapes_only_in_its_shapes_commands():
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    shapes_commands = {"cmd_data", "cmd_score", "cmd_evaluate", "cmd_compare"}
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trilemma.shapes"):
                assert fn.name in shapes_commands, f"cli.{fn.name} imports {node.module}"
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert not any((m or "").startswith("trilemma.shapes") for m in top)
