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


# Shapes is a plugin: the benchmark's own package, its evaluation and the CLI's Shapes commands import it; the
# shared layers reach it only through the registries (a data type, a model class) by name.
SHAPES_USERS = {"eval/evaluate.py", "eval/folder.py", "eval/fidelity.py", "eval/hard_negatives.py", "cli.py"}


def test_only_the_shapes_benchmark_imports_shapes():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("shapes/") or rel in SHAPES_USERS:
            continue
        shapes = {m for m in imported_modules(path) if m == "trilemma.shapes" or m.startswith("trilemma.shapes.")}
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
