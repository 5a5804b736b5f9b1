import pytest
import torch

from scrl.runtime import distributed


def test_single_process_without_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.init_distributed("cpu")
    assert info == distributed.DistInfo(0, 1, 0, torch.device("cpu"))
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, info.device) is model
    distributed.cleanup()  # no group: nothing to do


def test_bad_device_is_rejected():
    with pytest.raises(ValueError, match="device"):
        distributed.init_distributed("tpu")

