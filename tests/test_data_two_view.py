import random

import numpy as np
import pytest
import torch

from scrl import TwoViewTransform, ViewGeometry
from scrl.data import ResumableSampler, SyntheticScenes, TwoViewDataset, collate_two_views, two_view_loader
from scrl.runtime.random_streams import mix_seed, seeded_global_rngs


def _noisy_views(image):
    """Draws from every global generator a transform might use; the result records the draws."""
    draw = torch.tensor([torch.rand(()).item(), random.random(), np.random.rand()])
    view = (draw * 255).to(torch.uint8).view(3, 1, 1).expand(3, 4, 4).clone()
    geom = ViewGeometry.full(image.width, image.height).resize(4, 4)
    return view, view.clone(), geom, geom


def test_a_transform_whose_geometry_does_not_describe_its_views_is_refused():
    def wrong_size(image):
        view = torch.zeros(3, 4, 4, dtype=torch.uint8)
        return view, view, ViewGeometry.full(image.width, image.height).resize(4, 4), ViewGeometry.full(image.width, image.height)

    with pytest.raises(ValueError, match=r"view2 is 4 x 4 px but its geometry says 32 x 32"):
        TwoViewDataset(SyntheticScenes(2, image_size=32), wrong_size)[0]


def test_sampler_order_depends_on_seed_and_epoch_and_resumes_mid_epoch():
    data = list(range(50))
    sampler = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == 50 and {e for e, _ in full} == {2} and sorted(i for _, i in full) == data
    sampler.set_epoch(2, start=20)
    assert list(sampler) == full[20:] and len(sampler) == 30
    again = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    again.set_epoch(2)
    assert list(again) == full
    again.set_epoch(3)
    assert [i for _, i in again] != [i for _, i in full]
    with pytest.raises(ValueError, match="start"):
        sampler.set_epoch(0, start=51)


def test_sampler_shards_are_disjoint_and_equal_sized():
    data = list(range(103))
    shards = []
    for rank in range(4):
        s = ResumableSampler(data, num_replicas=4, rank=rank, seed=0)
        s.set_epoch(1)
        shards.append([i for _, i in s])
    assert all(len(s) == 25 for s in shards)
    assert len(set().union(*map(set, shards))) == 100


def test_augmentations_are_a_function_of_seed_epoch_index_only():
    ds = TwoViewDataset(SyntheticScenes(8, image_size=32), _noisy_views, seed=5)
    torch.manual_seed(0)
    caller = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    a = ds[(1, 3)]
    # The caller's generators are untouched (workers=0 trains in this process).
    assert torch.equal(torch.get_rng_state(), caller[0]) and random.getstate() == caller[1]
    assert np.array_equal(np.random.get_state()[1], caller[2])
    torch.rand(5), random.random(), np.random.rand()  # whatever the caller does in between
    assert torch.equal(ds[(1, 3)][0], a[0])
    assert not torch.equal(ds[(2, 3)][0], a[0]) and not torch.equal(ds[(1, 4)][0], a[0])
    assert torch.equal(ds[3][0], ds[(0, 3)][0])
    assert mix_seed(5, 1, 3) != mix_seed(5, 3, 1) and mix_seed(5, 1, 3) != mix_seed(6, 1, 3) != mix_seed(6, 1)
    assert len({mix_seed(5, 1), mix_seed(5, 1, 0), mix_seed(5, 1, 0, 0), mix_seed(5, 1, 0, 0, 0)}) == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_do_not_depend_on_workers_or_resume_point(workers):
    ds = TwoViewDataset(SyntheticScenes(24, image_size=32), _noisy_views, seed=0)
    sampler = ResumableSampler(ds, num_replicas=1, rank=0, seed=0)
    reference = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        reference += [b.view1 for b in two_view_loader(ds, sampler, batch_size=4, workers=0)]
    loader = two_view_loader(ds, sampler, batch_size=4, workers=workers)
    sampler.set_epoch(1, start=8)  # resume after two batches of epoch 1
    resumed = list(loader)
    assert len(resumed) == 4 and all(torch.equal(a, b.view1) for a, b in zip(reference[8:], resumed))


def test_collate_keeps_views_separate_and_batches_geometries():
    ds = TwoViewDataset(SyntheticScenes(4, image_size=40), _noisy_views)
    batch = collate_two_views([ds[i] for i in range(3)])
    assert batch.view1.shape == batch.view2.shape == (3, 3, 4, 4) and batch.view1.dtype == torch.uint8
    assert batch.geom1.crop.shape == (3, 4) and batch.geom1.flipped.shape == (3,) and batch.skipped == {}
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved.geom2, ViewGeometry) and moved.skipped == batch.skipped
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(moved.geom2, batch.geom2))


class _Replacing(torch.utils.data.Dataset):
    """A dataset that replaces unreadable files, by the protocol alone (no ImageFolderDataset)."""

    def __init__(self) -> None:
        self.scenes = SyntheticScenes(3, image_size=32)

    def __len__(self) -> int:
        return len(self.scenes)

    def load(self, index):
        return self.scenes[index][0], {f"broken/{index}.jpg": "OSError: truncated"}

    def __getitem__(self, index):
        raise AssertionError("a dataset with load() is read through it")


def test_images_come_from_load_when_a_dataset_has_it_else_from_indexing():
    scenes = SyntheticScenes(3, image_size=32)
    reference = TwoViewDataset(scenes, _noisy_views, seed=1)[(0, 2)]
    replacing = TwoViewDataset(_Replacing(), _noisy_views, seed=1)[(0, 2)]
    assert replacing[4] == {"broken/2.jpg": "OSError: truncated"} and reference[4] == {}  # (image, boxes, labels) items: first element
    assert torch.equal(replacing[2].crop, reference[2].crop) and torch.equal(replacing[0], reference[0])
    plain = TwoViewDataset([scenes[i][0] for i in range(3)], _noisy_views, seed=1)[(0, 2)]  # items are images
    assert plain[4] == {} and torch.equal(plain[2].crop, reference[2].crop)


def test_loader_generator_takes_the_runs_seed():
    ds = TwoViewDataset(SyntheticScenes(8, image_size=48), TwoViewTransform.byol(size=32, output="uint8"), seed=0)
    sampler = ResumableSampler(ds, num_replicas=1, rank=0, seed=0)
    assert two_view_loader(ds, sampler, batch_size=4, workers=0).generator.initial_seed() == 0  # the default, as before
    assert two_view_loader(ds, sampler, batch_size=4, workers=0, seed=5).generator.initial_seed() == 5


def test_seeded_global_rngs_repeat_for_a_seed_and_give_the_callers_streams_back():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tolist()
    draws = []
    for _ in range(2):
        with seeded_global_rngs(mix_seed(3, 1)):
            draws.append((torch.rand(3), random.random(), float(np.random.rand())))
    with pytest.raises(RuntimeError), seeded_global_rngs(4):
        torch.rand(1)
        raise RuntimeError("the streams come back after an exception too")
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][1:] == draws[1][1:]
    assert torch.equal(before[0], torch.get_rng_state()) and before[1:] == (random.getstate(), np.random.get_state()[1].tolist())
