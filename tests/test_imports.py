"""What a user meets first, from a fresh process: every module imports on its own, every script answers --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*(ROOT / "examples").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"), ROOT / "docs" / "make_figures.py"])

# One interpreter imports each module in turn with every scrl module dropped in between, so
# each import starts from nothing of scrl (torch and the rest stay loaded, which keeps it fast).
IMPORT_EACH = """
import importlib, pathlib, sys, traceback
root = pathlib.Path(sys.argv[1])
sys.path.insert(0, str(root))
names = sorted(
    ".".join(path.relative_to(root).with_suffix("").parts[:-1] if path.name == "__init__.py" else path.relative_to(root).with_suffix("").parts)
    for path in (root / "scrl").rglob("*.py")
)
failed = 0
for name in names:
    for loaded in [m for m in sys.modules if m == "scrl" or m.startswith("scrl.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed += 1
        print(f"--- import {name} failed:\\n{traceback.format_exc()}")
print(f"{len(names) - failed} of {len(names)} modules imported")
sys.exit(1 if failed else 0)
"""


def fresh_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH, str(ROOT)], capture_output=True, text=True, env=fresh_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    count = int(done.stdout.split()[-5])
    assert count == len(list((ROOT / "scrl").rglob("*.py"))) and count > 60


def test_a_cycle_is_caught_by_the_fresh_import_check(tmp_path: Path) -> None:
    # The check itself must fail on a cycle such as the one between export and evaluation.
    package = tmp_path / "scrl"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import B\nA = 1\n")
    (package / "b.py").write_text("from .a import A\nB = 2\n")
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "1 of 3 modules imported" in done.stdout and "circular import" in done.stdout


def test_every_script_answers_help_in_a_fresh_process() -> None:
    # Started together: each one pays for its own torch import, so in parallel this takes seconds.
    running = {
        script: subprocess.Popen([sys.executable, str(script), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=fresh_env())
        for script in SCRIPTS
    }
    failures = []
    for script, process in running.items():
        out, err = process.communicate(timeout=300)
        name = script.relative_to(ROOT)
        if process.returncode != 0 or "usage:" not in out:
            failures.append(f"{name}: exit {process.returncode}\n{err[-2000:]}")
    assert not failures, "\n".join(failures)
    assert len(running) >= 11


def test_import_scrl_loads_the_method_and_no_engine_export_or_evaluation() -> None:
    code = "import sys, scrl; print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('scrl.')}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=fresh_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = eval(done.stdout)
    assert {"models", "lars", "schedule", "transforms"} <= set(loaded)
    # scrl.runtime, the bottom layer, comes in with the data's per-sample seeds; nothing above the views does.
    assert not {"train", "eval", "export", "viz"} & set(loaded), loaded
