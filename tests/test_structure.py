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
