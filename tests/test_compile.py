"""torch.compile traces SCRL's and BYOL's forward (and backward) and the batched augmentation as single graphs.

``fullgraph=True`` turns any graph break into an error. The ``aot_eager`` backend traces the
forward and the backward with AOTAutograd as inductor does, but runs the captured graphs with
eager kernels, so compiled and eager results (random draws included) agree exactly and the
test needs no C++ compiler.
"""

import pytest
import torch

from scrl import BYOL, SCRL, ViewGeometry
from scrl.transforms import BatchPhotometric

SMALL = dict(projector_hidden=32, projection_dim=16)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def views_and_geometries(batch: int = 4, size: int = 64):
    views = torch.randn(2, batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    crops = torch.tensor([[0.0, 0.0, 80.0, 80.0], [16.0, 8.0, 96.0, 88.0]], dtype=torch.float64)
    flipped = torch.tensor([False, True] * (batch // 2))
    hw = torch.full((batch, 2), float(size), dtype=torch.float64)
    geoms = [ViewGeometry(crops[v].expand(batch, 4), flipped, hw) for v in range(2)]
    return views[0], views[1], geoms[0], geoms[1]


@pytest.mark.slow
@pytest.mark.parametrize("cls, arch", [(SCRL, "resnet18"), (BYOL, "resnet18"), (SCRL, "convnext_tiny"), (SCRL, "mobilenet_v3_small")])
def test_forward_and_backward_compile_without_graph_breaks(cls, arch):
    torch.manual_seed(0)
    model = cls(arch, **SMALL)
    inputs = views_and_geometries()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (compiled, model):
        # Without a generator box sampling draws from the global RNG and the whole step is one
        # graph; with one, each draw is a graph break (the next test).
        torch.manual_seed(1)
        loss, logs = fn(*inputs, generator=None)
        model.zero_grad(set_to_none=True)
        loss.backward()
        results.append((loss.detach(), logs, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_c, logs_c, grads_c), (loss_e, logs_e, grads_e) = results
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(logs_c, logs_e)
    assert grads_c.keys() == grads_e.keys() and len(grads_c) == len([p for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(grads_c, grads_e)
    if cls is SCRL:
        assert 0 < logs_c["valid_box_share"] < 1  # some box slots invalid: the static-shape path is exercised


@pytest.mark.slow
def test_compiled_model_draws_boxes_from_a_generator_as_eager_does():
    """scrl.train.Pretrainer passes its "boxes" stream under compile too: the draws run eagerly between graphs."""
    torch.manual_seed(0)
    model = SCRL("resnet18", **SMALL)
    inputs = views_and_geometries()
    compiled = torch.compile(model, backend="aot_eager")
    results = [fn(*inputs, generator=torch.Generator().manual_seed(3)) for fn in (compiled, model)]
    torch.testing.assert_close(results[0][0].detach(), results[1][0].detach())
    torch.testing.assert_close(results[0][1], results[1][1])
    other = model(*inputs, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other[0].detach(), results[1][0].detach())  # the generator does choose the boxes


@pytest.mark.parametrize("view", [1, 2])
def test_batch_photometric_compiles_without_graph_breaks(view):
    augment = BatchPhotometric(view=view)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(augment, backend="aot_eager", fullgraph=True)
    torch.manual_seed(2)
    got = compiled(images)
    torch.manual_seed(2)
    torch.testing.assert_close(got, augment(images))
