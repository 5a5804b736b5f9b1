"""RandomStreams: named generators derived from (seed, rank, name), carried exactly through a checkpoint."""

import pytest
import torch

from scrl.runtime import RandomStreams, save_checkpoint, load_checkpoint


def draws(generator, n=4):
    return torch.rand(n, generator=generator).tolist()


def test_streams_follow_seed_rank_and_name_and_not_the_order_they_are_made():
    a, b = RandomStreams(3, rank=0), RandomStreams(3, rank=0)
    first = draws(a["boxes"])
    draws(b["augment"])  # another stream made first does not shift this one
    assert draws(b["boxes"]) == first
    assert draws(RandomStreams(3, rank=1)["boxes"]) != first
    assert draws(RandomStreams(4, rank=0)["boxes"]) != first
    assert draws(RandomStreams(3)["augment"]) != first
    assert sorted(a) == ["boxes"] and len(b) == 2


def test_state_dict_continues_every_stream_through_a_weights_only_file(tmp_path):
    streams = RandomStreams(0, rank=2)
    draws(streams["boxes"]), draws(streams["augment"])
    save_checkpoint({"streams": streams.state_dict()}, tmp_path / "s.pth")
    expected = {name: draws(streams[name]) for name in ("boxes", "augment", "new")}
    resumed = RandomStreams(0, rank=2)
    resumed.load_state_dict(load_checkpoint(tmp_path / "s.pth")["streams"])  # weights_only=True
    assert {name: draws(resumed[name]) for name in ("boxes", "augment", "new")} == expected


def test_restart_gives_fresh_streams_that_follow_the_salt():
    streams = RandomStreams(0)
    plain = draws(streams["boxes"])
    streams.restart(7)
    salted = draws(streams["boxes"])
    assert salted != plain and draws(RandomStreams(0, salt=(7,))["boxes"]) == salted
    state = streams.state_dict()
    assert state["salt"] == [7]


def test_streams_leave_the_global_generators_alone():
    before = torch.get_rng_state()
    draws(RandomStreams(0)["x"])
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(seed=1.5), dict(seed=0, rank=-1)])
def test_bad_seed_or_rank_is_named(bad):
    with pytest.raises(ValueError, match="seed|rank"):
        RandomStreams(**bad)
