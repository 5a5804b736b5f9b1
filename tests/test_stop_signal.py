import os
import signal

import pytest

from scrl.train.stop_signal import StopSignal


def test_first_signal_sets_a_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        assert not stop.requested and not stop.agreed()
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before kill() returns in the main thread
        assert stop.requested and stop.agreed() and stop.received == signal.SIGTERM
        # The second signal would get the previous behaviour again.
        assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_second_sigint_interrupts_at_once():
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
