import importlib.util
import logging
import os
import sys
import tempfile

import pytest
import torch

# Ultralytics writes its settings file where YOLO_CONFIG_DIR points when it is first imported:
# a folder of the test session's, not the home directory of whoever runs the tests.
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="scrl-tests-ultralytics-"))
if importlib.util.find_spec("ultralytics") is not None:
    # Imported once, the way scrl imports it (PIL.Image.open kept PIL's), before any test
    # imports it directly and its import replaces PIL.Image.open for the rest of the session.
    from scrl.yolo_trunk import import_ultralytics

    import_ultralytics()


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one intra-op thread.

    The tests use tiny models and images, where a second thread costs more in synchronisation
    than it saves, and on a small shared machine spinning threads slow every process down.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _CurrentStdout(logging.Handler):
    """Writes to whatever ``sys.stdout`` is at the moment, so that ``capsys`` sees the lines."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stdout.write(record.getMessage() + "\n")


@pytest.fixture(autouse=True)
def run_log_on_stdout():
    """Show the ``scrl`` logger's INFO lines on stdout, as ``examples/pretrain_imagenet.py`` does.

    The library installs no handler; the tests read what a user of the script reads.
    """
    logger, handler = logging.getLogger("scrl"), _CurrentStdout()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield
    logger.removeHandler(handler)
    logger.setLevel(level)
