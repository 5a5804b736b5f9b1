"""The layering rule of docs/architecture.md, checked on the imports written in every module's source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scrl"


def layer_table(markdown: str) -> dict[str, int]:
    """``{module or package: layer}`` from the table of the "Layers" section of architecture.md."""
    section = markdown.split("## Layers", 1)[1].split("\n## ", 1)[0]
    table: dict[str, int] = {}
    for line in section.splitlines():
        row = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if row:
            for name in re.findall(r"`(scrl(?:\.\w+)*)`", row.group(2)):
                table[name] = int(row.group(1))
    return table


TABLE = layer_table((ROOT / "docs" / "architecture.md").read_text())


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int | None:
    """The layer of the longest table entry that ``name`` is or lies inside."""
    while name:
        if name in TABLE:
            return TABLE[name]
        name = name.rpartition(".")[0]
    return None


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imported_modules(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` for every module of ``scrl`` that running ``source`` (module ``name``) imports.

    Importing ``scrl.a.b`` runs ``scrl/a/__init__.py`` first, so each parent package counts as
    imported too; ``from .a import b`` imports the submodule ``a.b`` where that is a file.
    Imports inside functions count like those at the top, and so does ``import_module("scrl.x")``.
    """
    package = name if is_package else name.rpartition(".")[0]
    targets: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([node.module] if node.module else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}")]
            # A name that is no submodule comes from the package's __init__ itself.
            whole = len(submodules) < len(node.names)
            targets += [(node.lineno, module) for module in submodules + ([base] if whole else [])]
        elif isinstance(node, ast.Call) and _called_name(node.func) == "import_module" and node.args:
            named = node.args[0]
            if isinstance(named, ast.Constant) and isinstance(named.value, str):
                dots = len(named.value) - len(named.value.lstrip("."))
                parents = package.split(".")[: len(package.split(".")) - dots + 1] if dots else []
                targets.append((node.lineno, ".".join(parents + [named.value.lstrip(".")])))
    found = []
    for line, target in targets:
        parts = target.split(".")
        if parts[0] != "scrl":
            continue
        if target == "scrl":
            found.append((line, target))  # the public face
        # Every package on the way is initialised; the root always is, before anything else.
        found += [(line, ".".join(parts[:depth])) for depth in range(2, len(parts) + 1) if is_module(".".join(parts[:depth]))]
    return found


def _called_name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def upward_imports(source: str, name: str, is_package: bool) -> list[str]:
    own = layer_of(name)
    return [
        f"line {line}: {module} (layer {layer_of(module)})"
        for line, module in imported_modules(source, name, is_package)
        if module == "scrl" or layer_of(module) > own
    ]


SOURCES = [path for path in sorted(PACKAGE.rglob("*.py")) if path != PACKAGE / "__init__.py"]


def test_the_table_orders_the_layers() -> None:
    assert TABLE["scrl.runtime"] < TABLE["scrl.geometry"] < TABLE["scrl.data"] < TABLE["scrl.transforms"]
    assert TABLE["scrl.transforms"] < TABLE["scrl.export"] < TABLE["scrl.eval"] < TABLE["scrl.train"]


@pytest.mark.parametrize("path", SOURCES, ids=module_name)
def test_module_imports_nothing_from_a_layer_above_its_own(path: Path) -> None:
    name = module_name(path)
    assert layer_of(name) is not None, f"{name} has no layer in the table of docs/architecture.md (## Layers)"
    upward = upward_imports(path.read_text(), name, path.name == "__init__.py")
    assert not upward, f"{name} (layer {layer_of(name)}) imports from above its layer: " + "; ".join(upward)


def test_the_package_root_imports_nothing_above_the_transforms() -> None:
    # So that `import scrl` loads the method and its views, and no engine, export or evaluation code.
    source = (PACKAGE / "__init__.py").read_text()
    above = [f"line {line}: {module}" for line, module in imported_modules(source, "scrl", is_package=True)
             if layer_of(module) > TABLE["scrl.transforms"]]
    assert not above, "scrl/__init__.py imports " + "; ".join(above)


def test_upward_imports_are_found_however_they_are_written() -> None:
    source = (
        "from .train.pretrainer import Pretrainer\n"  # a package above, through one of its modules
        "from . import viz\n"  # a module above, named as an attribute of the root
        "def later():\n"
        "    import scrl.export\n"  # inside a function
        "    from scrl import SCRL\n"  # the public face
        "from .box_sampler import BoxPairs\n"  # the same layer: allowed
        "importlib.import_module('scrl.eval')\n"  # by name, at run time
    )
    found = upward_imports(source, "scrl.geometry", is_package=False)
    assert sorted(entry.split(":")[0] for entry in found) == ["line 1", "line 1", "line 2", "line 4", "line 5", "line 7"]
    assert {entry.split(": ")[1].split(" ")[0] for entry in found} == {"scrl", "scrl.train", "scrl.train.pretrainer", "scrl.viz", "scrl.export", "scrl.eval"}
    assert upward_imports("from ..runtime import save_checkpoint\nfrom .coco import CocoBoxes\n", "scrl.data.yolo", False) == []
