"""RoI linear evaluation, k-NN, cross-view retrieval and the online probe."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from scrl.data import BoxDataError, SyntheticScenes
from scrl.eval import (
    adapted_trunk,
    cross_view_retrieval,
    extract_roi_features,
    knn_predict,
    roi_linear_eval,
    roi_probe,
    split_by_image,
    top1_accuracy,
    train_linear_head,
)
from scrl.trunk import Trunk, resnet_trunk
from scrl.transforms import IMAGENET_MEAN, IMAGENET_STD


def texture_trunk(seed: int = 0) -> Trunk:
    """Fixed random filters + ReLU + local averaging: features that see colour, edges and texture."""
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(4)
    )
    return Trunk(body, stride=8, channels=64)


class ConstantMap(nn.Module):
    """Ignores the image: the same feature everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 8, x.shape[2] // 8, x.shape[3] // 8)


def test_informative_trunk_beats_constant_features_on_synthetic_scenes() -> None:
    scenes = SyntheticScenes(128, image_size=64, seed=2)
    kwargs = dict(image_size=64, epochs=30, seeds=(0, 1))
    informative = roi_linear_eval(texture_trunk(), scenes, **kwargs)
    constant = roi_linear_eval(Trunk(ConstantMap(), stride=8, channels=8, cell_offset=4.0), scenes, **kwargs)
    assert informative.test_boxes == constant.test_boxes > 150
    assert informative.train_images + informative.test_images == 128
    # Constant features carry nothing: the head can only learn the majority class.
    assert constant.linear_top1 == constant.majority
    assert informative.linear_top1 > constant.linear_top1 + 6.0
    assert informative.linear_top1 > 2 * informative.chance
    assert informative.knn_top1 > constant.knn_top1
    assert abs(informative.chance - 100 / 18) < 1e-9 and len(informative.linear_runs) == 2


class NotToBeRun(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the trunk ran on a split that has no boxes on one side")


def test_a_side_without_boxes_is_refused_before_the_trunk_runs() -> None:
    scenes = SyntheticScenes(4, image_size=32)
    background = [(image, boxes[:0], labels[:0]) for image, boxes, labels in (scenes[0], scenes[1])]
    trunk = Trunk(NotToBeRun(), stride=8, channels=8, cell_offset=4.0)
    with pytest.raises(BoxDataError, match="the 2 held-out images of .* hold no boxes"):
        roi_linear_eval(trunk, scenes, background, image_size=32)
    with pytest.raises(BoxDataError, match="the 2 training images"):
        roi_linear_eval(trunk, background, scenes, image_size=32)


def test_split_is_by_image_and_features_follow_it() -> None:
    train, test = split_by_image(20, 0.25, seed=3)
    assert sorted(train + test) == list(range(20)) and len(test) == 5
    assert (train, test) == split_by_image(20, 0.25, seed=3) != split_by_image(20, 0.25, seed=4)
    scenes = SyntheticScenes(20, image_size=64, seed=0)
    features = extract_roi_features(texture_trunk(), scenes, test, image_size=64)
    assert set(features.image_index.tolist()) == set(test)
    expected = torch.cat([scenes[i][2] for i in test])
    assert torch.equal(features.labels, expected) and features.features.shape == (len(expected), 64)


class CellCentres(nn.Module):
    """A stride-8 'trunk' whose two channels hold each cell's centre (x, y) in input pixels."""

    def __init__(self, cell_offset: float) -> None:
        super().__init__()
        self.cell_offset = cell_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2] // 8, x.shape[3] // 8
        ys, xs = torch.meshgrid(torch.arange(h) * 8.0 + self.cell_offset, torch.arange(w) * 8.0 + self.cell_offset, indexing="ij")
        return torch.stack([xs, ys]).expand(x.shape[0], -1, -1, -1)


@pytest.mark.parametrize("cell_offset", [0.5, 4.0])
def test_box_features_are_pooled_at_the_trunks_cell_centres(cell_offset) -> None:
    class OneBox(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return Image.new("RGB", (64, 64)), torch.tensor([[10.0 + i, 12.0, 30.0, 44.0 - i]]), torch.tensor([0])

    trunk = Trunk(CellCentres(cell_offset), stride=8, channels=2, cell_offset=cell_offset)
    features = extract_roi_features(trunk, OneBox(), image_size=64)
    torch.testing.assert_close(features.features, torch.tensor([[20.0, 28.0], [20.5, 27.5]]))


def test_batchnorm_adapted_on_evaluation_images_and_original_untouched() -> None:
    class Solid(torch.utils.data.Dataset):
        colours = [(255, 0, 0), (0, 128, 255), (30, 60, 90), (200, 200, 10)]

        def __len__(self) -> int:
            return len(self.colours)

        def __getitem__(self, i: int):
            image = Image.new("RGB", (40, 24), self.colours[i])
            return image, torch.tensor([[0.0, 0.0, 40.0, 24.0]]), torch.tensor([i])

    trunk = Trunk(nn.Sequential(nn.BatchNorm2d(3)), stride=1, channels=3)
    trunk = nn.SyncBatchNorm.convert_sync_batchnorm(trunk)  # as in a DDP run: must still work on one process
    adapted = adapted_trunk(trunk, Solid(), image_size=16, batch_size=2)
    values = torch.tensor(Solid.colours, dtype=torch.float64) / 255
    normalised = (values - torch.tensor(IMAGENET_MEAN, dtype=torch.float64)) / torch.tensor(IMAGENET_STD, dtype=torch.float64)
    bn = adapted.body[0]
    assert type(bn) is nn.BatchNorm2d and not bn.training
    torch.testing.assert_close(bn.running_mean.double(), normalised.mean(0), atol=1e-5, rtol=0)
    assert torch.equal(trunk.body[0].running_mean, torch.zeros(3)) and trunk.training  # original unchanged


def test_linear_head_separates_and_folds_standardisation() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)
    # Huge offset and tiny scale: standardisation must make SGD work anyway.
    features = 1e4 + 1e-3 * (torch.randn(300, 5, generator=g) * 0.1 + nn.functional.one_hot(labels, 5).float())
    head = train_linear_head(features, labels, 3, epochs=20, batch_size=64, generator=g)
    assert top1_accuracy(head(features), labels) == 100.0
    constant = train_linear_head(torch.ones(300, 4), labels, 3, epochs=5, generator=g)
    predictions = constant(torch.ones(300, 4)).argmax(1)
    assert (predictions == torch.bincount(labels).argmax()).all()


def test_knn_votes_by_cosine_neighbours() -> None:
    train = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    test = torch.tensor([[5.0, 0.2], [0.2, 0.9]])
    assert knn_predict(train, labels, test, 2, k=2).tolist() == [0, 1]
    # k larger than the training set: all five vote; plain majority says class 1 for both.
    assert knn_predict(train, labels, test, 2, k=50, temperature=None).tolist() == [1, 1]
    # A large shared component (as after a ReLU) makes every raw cosine ~1, so the weighted
    # vote of all neighbours degenerates to the majority; centring restores the neighbourhood.
    shared = torch.full((2,), 100.0)
    train, test = train + shared, test + shared
    assert knn_predict(train, labels, test, 2, k=5, center=False).tolist() == [1, 1]
    assert knn_predict(train, labels, test, 2, k=5).tolist() == [0, 1]


def test_cross_view_retrieval_informative_vs_constant() -> None:
    scenes = SyntheticScenes(16, image_size=64, seed=1)
    kwargs = dict(view_size=48, min_size=12.0, num_boxes=4, batch_size=8, photometric=False, seed=0)
    informative = cross_view_retrieval(texture_trunk(), scenes, **kwargs)
    constant = cross_view_retrieval(Trunk(ConstantMap(), stride=8, channels=8, cell_offset=4.0), scenes, **kwargs)
    assert informative.queries == constant.queries > 20
    assert informative.top1 > 2 * informative.chance and informative.top1 > constant.top1
    state = torch.get_rng_state()
    assert informative == cross_view_retrieval(texture_trunk(), scenes, **kwargs)  # seeded
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is left alone
    other = cross_view_retrieval(texture_trunk(), scenes, **{**kwargs, "seed": 1})
    assert other != informative and other.top1 > 2 * other.chance
    with pytest.raises(ValueError, match="seed"):
        cross_view_retrieval(texture_trunk(), scenes, **{**kwargs, "seed": -1})


def test_roi_probe_leaves_the_trunk_alone_and_stages_concatenate() -> None:
    trunk = resnet_trunk("resnet18").train()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    scenes = SyntheticScenes(8, image_size=64, seed=0)
    metrics = roi_probe(trunk, scenes, image_size=64, epochs=2, batch_size=4)
    assert set(metrics) == {
        "roi_linear_top1",
        "roi_knn_top1",
        "roi_chance",
        "roi_majority",
        "roi_train_boxes",
        "roi_test_boxes",
        "roi_probe_seconds",
    }
    assert 0 <= metrics["roi_linear_top1"] <= 100 and metrics["roi_test_boxes"] > 0
    assert trunk.training and all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())
    features = extract_roi_features(trunk, scenes, [0, 1], image_size=64, stages=("layer3", "layer4"))
    assert features.features.shape[1] == 256 + 512 and trunk.training
