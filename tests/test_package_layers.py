"""The package tree as a specification (docs/architecture.md): each subpackage of `covid_models` imports only from
the layers below it, the library never imports Streamlit, and no module grows past ~500 lines without saying in its
docstring why it is one module."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "covid_models"
MAX_LINES = 500
LONG_REASON = "One module because"  # the docstring phrase a module over MAX_LINES starts its reason with

# What each part of the library may import from, besides itself. The order is the architecture: reading images knows
# nothing of models, models nothing of analysis, analysis nothing of training, a hospital's sample, reviews or PACS.
BASE = {"covid_models", "metrics", "runtime", "formatting"}
MAY_IMPORT = {
    "metrics": set(),
    "runtime": set(),
    "formatting": set(),
    "imaging": BASE,
    "models": BASE | {"imaging"},
    "analysis": BASE | {"imaging", "models"},
    "training": BASE | {"imaging", "models", "analysis"},
    "local": BASE | {"imaging", "models", "analysis", "training"},
    "reviews": BASE | {"imaging"},
    "pacs": BASE | {"imaging", "models", "analysis"},
    "benchmarking": BASE | {"imaging", "models", "analysis", "training"},
    "__init__": {"runtime"},
}


def library_modules() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def part_of(path: Path) -> str:
    """The layer a module belongs to: its subpackage, or its own name at the top of the library."""
    return path.relative_to(LIBRARY).with_suffix("").parts[0]


def imported_parts(path: Path) -> dict[str, int]:
    """The library parts a module imports (at the top or inside a function), with a line where each is imported."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for name in names:
            dotted = name.split(".")
            if dotted[0] == "covid_models":
                found.setdefault(dotted[1] if len(dotted) > 1 else "covid_models", node.lineno)
    return found


def test_the_layer_map_names_every_part_of_the_library():
    assert {part_of(path) for path in library_modules()} == set(MAY_IMPORT)


def test_the_import_check_sees_imports_inside_functions(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from covid_models.training.splits import x\n"
                      "    import covid_models.pacs\n")
    assert imported_parts(module) == {"training": 4, "pacs": 5}


@pytest.mark.parametrize("path", library_modules(), ids=lambda path: path.relative_to(LIBRARY).as_posix())
def test_a_module_imports_only_from_the_layers_below_it(path: Path):
    part = part_of(path)
    upward = {other: line for other, line in imported_parts(path).items()
              if other != part and other not in MAY_IMPORT[part]}
    assert not upward, f"{path.relative_to(ROOT)} ({part}) imports {upward} (part: line); allowed: {MAY_IMPORT[part]}"


@pytest.mark.parametrize("path", library_modules(), ids=lambda path: path.relative_to(LIBRARY).as_posix())
def test_the_library_never_imports_streamlit(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "streamlit" not in names


@pytest.mark.parametrize("path", [*library_modules(), *sorted((ROOT / "pages").glob("*.py")),
                                  *sorted((ROOT / "scripts").glob("*.py")), ROOT / "streamlit_app.py"],
                         ids=lambda path: path.relative_to(ROOT).as_posix())
def test_a_long_module_says_why_it_is_one_module(path: Path):
    text = path.read_text(encoding="utf-8")
    if len(text.splitlines()) <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(text)) or ""
    assert LONG_REASON in docstring, (f"{path.relative_to(ROOT)} has {len(text.splitlines())} lines: split it by what "
                                      f"each part does, or say in its docstring why not ('{LONG_REASON} ...')")
