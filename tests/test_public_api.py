"""The public surface: a short top level, docs/api.md listing every package's ``__all__``, and a docstring for each name."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import scrl

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT / "docs" / "api.md"
PACKAGES = ("scrl", "scrl.transforms", "scrl.data", "scrl.trunk", "scrl.export", "scrl.eval", "scrl.viz", "scrl.runtime", "scrl.train")
# Helpers other modules of scrl use; importable for them, but no part of the public surface.
INTERNAL_HELPERS = ("detectron2_key", "gradient_centroid", "mix_seed")


def documented_exports(markdown: str) -> dict[str, list[str]]:
    """``{package: names}`` from the "What each package exports" section of api.md.

    Each ``### `package` `` heading is followed by bullets whose backticked words are the names;
    prose between the bullets is not read.
    """
    found = re.search(r"^## What each package exports\n(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    assert found, "docs/api.md has no section '## What each package exports'"
    section = found.group(1)
    lists: dict[str, list[str]] = {}
    for block in re.split(r"^### ", section, flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        package = re.fullmatch(r"`(scrl(?:\.\w+)*)`", heading.strip())
        assert package, f"docs/api.md, 'What each package exports': heading {heading!r} is no `scrl.PACKAGE`"
        lists[package.group(1)] = [name for line in body.splitlines() if line.startswith("- ") for name in re.findall(r"`(\w+)`", line)]
    return lists


def drift(documented: dict[str, list[str]], exported: dict[str, list[str]]) -> list[str]:
    """One line for each section of api.md that differs from its package's ``__all__``."""
    problems = [f"no section for {package}" for package in exported if package not in documented]
    problems += [f"section {package} documents no package of the test's list" for package in documented if package not in exported]
    for package in [p for p in exported if p in documented]:
        listed, names = documented[package], exported[package]
        missing = sorted(set(names) - set(listed), key=str.lower)
        extra = sorted(set(listed) - set(names), key=str.lower)
        twice = sorted({name for name in listed if listed.count(name) > 1}, key=str.lower)
        if missing:
            problems.append(f"section {package}: missing {missing} (in {package}.__all__)")
        if extra:
            problems.append(f"section {package}: extra {extra} (not in {package}.__all__)")
        if twice:
            problems.append(f"section {package}: listed twice {twice}")
    return problems


def generated_docstring(obj: type) -> str | None:
    """The docstring Python writes itself for a NamedTuple or dataclass that has none."""
    if issubclass(obj, tuple) and hasattr(obj, "_fields"):
        return f"{obj.__name__}({repr(obj._fields).replace(chr(39), '')[1:-1]})"  # as collections.namedtuple writes it
    if dataclasses.is_dataclass(obj):
        return obj.__name__ + str(inspect.signature(obj)).replace(" -> None", "")
    return None


def own_docstring(obj: Any) -> str | None:
    """``obj``'s docstring, without the one a class inherits or Python generates."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")
        return None if doc == generated_docstring(obj) else doc
    return getattr(obj, "__doc__", None)


def test_top_level_scrl_exports_the_method_in_at_most_40_names() -> None:
    assert len(scrl.__all__) <= 40, f"scrl.__all__ holds {len(scrl.__all__)} names"
    assert len(set(scrl.__all__)) == len(scrl.__all__)
    # The target-momentum schedule is the engine's: scrl.train.cosine_tau.
    assert "cosine_tau" not in scrl.__all__ and not hasattr(scrl, "cosine_tau")


def test_api_md_lists_what_each_all_holds() -> None:
    exported = {package: list(importlib.import_module(package).__all__) for package in PACKAGES}
    problems = drift(documented_exports(API_MD.read_text()), exported)
    assert not problems, "docs/api.md, 'What each package exports', differs from the __all__s:\n" + "\n".join(problems)


def test_the_drift_check_names_what_is_missing_and_extra() -> None:
    markdown = "## What each package exports\n\n### `scrl.a`\n- one: `X`, `Y`\n\n### `scrl.b`\n- `Z`\n\n## Next\n- `W`\n"
    assert documented_exports(markdown) == {"scrl.a": ["X", "Y"], "scrl.b": ["Z"]}
    assert drift(documented_exports(markdown), {"scrl.a": ["X", "V"], "scrl.c": ["Z"]}) == [
        "no section for scrl.c",
        "section scrl.b documents no package of the test's list",
        "section scrl.a: missing ['V'] (in scrl.a.__all__)",
        "section scrl.a: extra ['Y'] (not in scrl.a.__all__)",
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_exists_and_has_a_docstring(package: str) -> None:
    module = importlib.import_module(package)
    absent = [name for name in module.__all__ if not hasattr(module, name)]
    assert not absent, f"{package}.__all__ names what {package} does not hold: {absent}"
    assert len(set(module.__all__)) == len(module.__all__), f"{package}.__all__ repeats a name"
    # A constant (a tuple, dict or string) has no docstring of its own, only its type's.
    undocumented = [
        name for name in module.__all__
        if (inspect.isclass(getattr(module, name)) or callable(getattr(module, name)))
        and not (own_docstring(getattr(module, name)) or "").strip()
    ]
    assert not undocumented, f"{package}: public names without a docstring: {undocumented}"


def test_the_docstring_check_sees_through_generated_docstrings() -> None:
    @dataclasses.dataclass
    class Plain:
        a: int

    @dataclasses.dataclass
    class Written:
        """A docstring of its own."""

        a: int

    class Child(Written):
        pass

    class Pair(NamedTuple):
        a: int

    assert own_docstring(Plain) is None and own_docstring(Written) and own_docstring(Child) is None
    assert own_docstring(Pair) is None and own_docstring(scrl.BoxPairs)


def test_internal_helpers_are_in_no_all() -> None:
    modules = [scrl, *(importlib.import_module(info.name) for info in pkgutil.walk_packages(scrl.__path__, "scrl."))]
    exporting = {(module.__name__, name) for module in modules for name in getattr(module, "__all__", ()) if name in INTERNAL_HELPERS}
    assert not exporting, f"internal helpers in an __all__: {sorted(exporting)}"
