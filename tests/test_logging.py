"""The library never prints: a run's console lines go to logging.getLogger("scrl"), configured by whoever runs it."""

import subprocess
import sys

RUN = """
import logging, sys, warnings
{setup}
from scrl.data import SyntheticScenes
from scrl.train import PretrainConfig, Pretrainer
config = PretrainConfig(device="cpu", image_size=64, batch_size=4, projector_hidden=32, projection_dim=16, epochs=1,
                        warmup_epochs=0.5, workers=0, output_dir=sys.argv[1])
assert Pretrainer(config, dataset=SyntheticScenes(8, image_size=96)).run()["step"] == 2
"""


def run(tmp_path, setup: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN.format(setup=setup), str(tmp_path)], capture_output=True, text=True, timeout=300)


def test_with_the_scrl_logger_at_warning_a_run_prints_nothing(tmp_path):
    done = run(tmp_path, 'logging.basicConfig(level=logging.INFO); logging.getLogger("scrl").setLevel(logging.WARNING)')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert (tmp_path / "metrics.jsonl").exists()  # it did run


def test_a_run_logs_its_lines_through_standard_logging_and_names_settings_by_their_fields(tmp_path):
    done = run(tmp_path, 'logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s | %(message)s")')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("scrl.") for line in lines), lines
    banner = next(line for line in lines if "no GPU" in line)
    # Named as fields (the script turns them into flags), and only those that apply: a dataset was given.
    assert "arch=resnet18" in banner and "--" not in banner and "synthetic_images" not in banner
    assert any("finished at step 2" in line for line in lines) and any("weights sha256" in line for line in lines)
