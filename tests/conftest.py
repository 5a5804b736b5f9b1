import pytest
import torch


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
