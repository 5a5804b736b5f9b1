"""The documentation's code runs as written: the custom loop and every API reference snippet."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scrl

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def test_readme_usage_snippet_runs():
    # The first block is the usage snippet; later ones (a full pretraining run) need real data.
    snippet = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[0]
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 10
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"]) and set(namespace["logs"]) >= {"loss", "valid_box_share", "collapse_std"}


def test_custom_loop_snippet_trains(capsys):
    snippet = python_blocks("custom_loop.md")[0]
    assert len(snippet.splitlines()) <= 35
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(snippet, "docs/custom_loop.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["step 0", "step 1", "step 2"]
    assert torch.isfinite(namespace["loss"]) and namespace["valid"].any()


@pytest.mark.slow
def test_extended_pretrainer_script_resumes_bit_exactly_and_prints_nothing_in_a_fresh_process(tmp_path):
    """The "Pretrainer extended" script of docs/custom_loop.md, as a user runs it: a registered trunk, an AdamW
    factory, an overridden training_step drawing from a stream of its own and a step callback; 6 steps equal
    3 steps resumed to 6, config.yaml round-trips, and with the scrl logger at WARNING only its own line prints."""
    script = tmp_path / "extended.py"
    script.write_text(python_blocks("custom_loop.md")[1])
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()] and done.stdout.startswith("6 steps = 3 steps resumed to 6")
    assert done.stderr == ""
    assert (tmp_path / "runs/parts/config.yaml").read_text().count("small-cnn") == 1


def test_api_reference_snippets_run():
    torch.manual_seed(0)
    namespace: dict = {}
    for i, block in enumerate(python_blocks("api.md")):
        exec(compile(block, f"docs/api.md block {i}", "exec"), namespace)
    assert torch.isfinite(namespace["loss"])


def test_api_reference_covers_every_public_name():
    text = (DOCS / "api.md").read_text()
    public = [name for name in dir(scrl) if not name.startswith("_") and not isinstance(getattr(scrl, name), type(scrl))]
    missing = [name for name in public if f"`{name}" not in text and f".{name}" not in text]
    assert not missing, f"docs/api.md does not document {missing}"
    for name in ("byol_view", "normalize_images"):
        assert f"scrl.transforms.{name}" in text
