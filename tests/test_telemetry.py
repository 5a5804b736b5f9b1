import json
import math
import subprocess
import sys

import pytest
import torch

from scrl.train.telemetry import DeviceMeans, MetricsLogger, NonFiniteWatch


def test_device_means_average_per_key_and_reset():
    means = DeviceMeans()
    assert means.read() == {}
    for loss, share in [(1.0, 0.5), (2.0, 0.25), (4.5, 0.0)]:
        means.add({"loss": torch.tensor(loss, requires_grad=True) * 1, "valid_box_share": torch.tensor(share)})
    assert means.read() == pytest.approx({"loss": 2.5, "valid_box_share": 0.25})
    assert means.count == 0 and means.read() == {}
    means.add({"loss": torch.tensor(3.0), "valid_box_share": torch.tensor(1.0)})
    assert means.read() == {"loss": 3.0, "valid_box_share": 1.0}
    means.add({"loss": torch.tensor(3.0)})
    with pytest.raises(ValueError, match="keys"):
        means.add({"other": torch.tensor(3.0)})


def test_non_finite_watch_keeps_the_first_bad_step():
    watch = NonFiniteWatch()
    assert watch.first_bad_step() is None
    for step, value in [(1, 2.0), (2, 1.0), (3, float("nan")), (4, 1.0), (5, float("inf"))]:
        watch.update(torch.tensor(value), step)
    assert watch.first_bad_step() == 3
    fresh = NonFiniteWatch()
    fresh.update(torch.tensor([1.0, -float("inf")]), 7)
    assert fresh.first_bad_step() == 7


def test_logger_appends_json_lines_with_null_for_non_finite(tmp_path):
    logger = MetricsLogger(tmp_path / "run", tensorboard=False)
    logger.log({"step": 1, "loss": 3.5, "new_skipped_files": ["/a.jpg"]})
    logger.close()
    resumed = MetricsLogger(tmp_path / "run", tensorboard=False)  # a resumed run appends
    resumed.log({"step": 2, "loss": math.nan, "eta_s": math.inf})
    resumed.close()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 3.5, "new_skipped_files": ["/a.jpg"]},
        {"step": 2, "loss": None, "eta_s": None},
    ]


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "rank1", enabled=False)
    logger.log({"step": 1})
    logger.close()
    assert not (tmp_path / "rank1").exists()


def test_missing_tensorboard_is_said_once_per_process(tmp_path):
    code = (
        "import logging, sys; sys.modules['torch.utils.tensorboard'] = None  # as if tensorboard were not installed\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from scrl.train.telemetry import MetricsLogger\n"
        f"for name in 'ab': MetricsLogger({str(tmp_path)!r} + '/' + name).close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("TensorBoard is not installed (pip install tensorboard): metrics go to metrics.jsonl only") == 1
    assert (tmp_path / "a" / "metrics.jsonl").exists() and not (tmp_path / "a" / "tensorboard").exists()
