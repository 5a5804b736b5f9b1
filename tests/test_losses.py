import math

import pytest
import torch
from torch import nn

from scrl import byol_loss, scrl_loss


def cos_rows(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [float(x @ y) / math.sqrt(float(x @ x) * float(y @ y)) for x, y in zip(a.double(), b.double())]


def test_scrl_loss_is_the_sum_of_two_masked_means_of_two_minus_two_cos():
    torch.manual_seed(0)
    q1, z2, q2, z1 = torch.randn(4, 6, 16).unbind(0)
    valid = torch.tensor([True, False, True, True, False, True])
    idx = [i for i in range(6) if valid[i]]
    forward = sum(2 - 2 * cos_rows(q1, z2)[i] for i in idx) / len(idx)
    backward = sum(2 - 2 * cos_rows(q2, z1)[i] for i in idx) / len(idx)
    loss = scrl_loss(q1, z2, q2, z1, valid)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(forward + backward, rel=1e-5)


def test_directions_are_summed_not_averaged():
    q = torch.randn(3, 8)
    assert scrl_loss(q, -q, q, -q, torch.ones(3, dtype=torch.bool)).item() == pytest.approx(8.0)
    assert byol_loss(q, -q, q, -q).item() == pytest.approx(8.0)
    assert scrl_loss(q, 2 * q, q, q, torch.ones(3, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-6)


def test_invalid_rows_do_not_matter():
    torch.manual_seed(1)
    q1, z2, q2, z1 = torch.randn(4, 5, 8).unbind(0)
    valid = torch.tensor([True, True, False, True, False])
    junk = [t.clone() for t in (q1, z2, q2, z1)]
    for t in junk:
        t[~valid] = torch.randn(2, 8) * 100
    torch.testing.assert_close(scrl_loss(*junk, valid), scrl_loss(q1, z2, q2, z1, valid))
    torch.testing.assert_close(scrl_loss(q1, z2, q2, z1, valid), scrl_loss(q1[valid], z2[valid], q2[valid], z1[valid], valid[valid]))


def test_zero_valid_pairs_give_exactly_zero_with_gradients_to_every_online_parameter():
    torch.manual_seed(2)
    online = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(6, 8)
    q = online(x)
    z = torch.randn(6, 4, requires_grad=True)
    loss = scrl_loss(q[:3], z[3:], q[3:], z[:3], torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    for name, p in online.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() == 0, name
    assert z.grad is None  # targets are constants


def test_without_a_mask_scrl_loss_is_byol_loss_and_equals_an_all_true_mask():
    torch.manual_seed(5)
    rows = [t.requires_grad_() for t in torch.randn(4, 7, 16).unbind(0)]
    plain = scrl_loss(*rows, None)
    assert torch.equal(plain, byol_loss(*rows))
    masked = scrl_loss(*rows, torch.ones(7, dtype=torch.bool))
    torch.testing.assert_close(masked, plain, rtol=1e-6, atol=0)
    plain_grads = torch.autograd.grad(plain, [rows[0], rows[2]])
    masked_grads = torch.autograd.grad(masked, [rows[0], rows[2]])
    torch.testing.assert_close(masked_grads, plain_grads, rtol=1e-6, atol=0)


def test_gradient_never_reaches_the_targets():
    q, z = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    byol_loss(q, z, q, z).backward()
    assert q.grad is not None and z.grad is None


def test_byol_loss_matches_the_formula():
    torch.manual_seed(3)
    q1, z2, q2, z1 = torch.randn(4, 5, 8).unbind(0)
    expected = sum(2 - 2 * c for c in cos_rows(q1, z2)) / 5 + sum(2 - 2 * c for c in cos_rows(q2, z1)) / 5
    assert byol_loss(q1, z2, q2, z1).item() == pytest.approx(expected, rel=1e-5)


def test_losses_run_in_float32_under_autocast():
    torch.manual_seed(4)
    q1, z2, q2, z1 = torch.randn(4, 6, 32).unbind(0)
    valid = torch.ones(6, dtype=torch.bool)
    reference = scrl_loss(q1, z2, q2, z1, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = scrl_loss(*(t.bfloat16() for t in (q1, z2, q2, z1)), valid)
        low_byol = byol_loss(*(t.bfloat16() for t in (q1, z2, q2, z1)))
    assert low.dtype == low_byol.dtype == torch.float32
    torch.testing.assert_close(low, reference, atol=2e-2, rtol=1e-2)


def test_bad_shapes_are_rejected():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="valid"):
        scrl_loss(q, q, q, q, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid"):
        scrl_loss(q, q, q, q, torch.ones(3))
    with pytest.raises(ValueError, match="q1, z2, q2, z1"):
        byol_loss(q, q, q, torch.randn(3, 5))


@pytest.mark.parametrize("junk", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", range(4))
def test_nothing_in_an_invalid_row_reaches_the_loss_or_its_gradient(junk, where):
    torch.manual_seed(6)
    clean = torch.randn(4, 5, 8).unbind(0)
    valid = torch.tensor([True, False, True, True, False])
    dirty = [t.clone() for t in clean]
    dirty[where][1, 3] = junk  # one coordinate of an invalid row of q1, z2, q2 or z1
    dirty[where][4] = junk  # and a whole one
    rows = [t.requires_grad_() for t in dirty]
    loss = scrl_loss(*rows, valid)
    kept = [t[valid].requires_grad_() for t in clean]
    reference = scrl_loss(*kept, None)
    torch.testing.assert_close(loss, reference)
    grads = torch.autograd.grad(loss, [rows[0], rows[2]])
    kept_grads = torch.autograd.grad(reference, [kept[0], kept[2]])
    for grad, kept_grad in zip(grads, kept_grads):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad[valid], kept_grad)
        assert torch.equal(grad[~valid], torch.zeros(2, 8))


def _online_rows(m: int) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(7)
    online = nn.Linear(8, 4)
    return online, online(torch.randn(m, 8))


def _assert_zero_with_zero_gradients(loss: torch.Tensor, online: nn.Module) -> None:
    assert loss.dtype == torch.float32 and loss.shape == () and loss.item() == 0.0
    loss.backward()
    for name, p in online.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name


def test_no_valid_pair_gives_zero_even_when_the_rows_hold_nan():
    online, q = _online_rows(6)
    q = torch.where(torch.arange(6)[:, None] == 2, float("nan"), q)
    z = torch.full((6, 4), float("nan"))
    _assert_zero_with_zero_gradients(scrl_loss(q[:3], z[3:], q[3:], z[:3], torch.zeros(3, dtype=torch.bool)), online)


@pytest.mark.parametrize("valid", [None, torch.zeros(0, dtype=torch.bool)])
def test_no_row_at_all_gives_zero_connected_to_the_inputs(valid):
    online, q = _online_rows(0)
    z = torch.randn(0, 4)
    _assert_zero_with_zero_gradients(scrl_loss(q, z, q, z, valid), online)


def test_byol_loss_of_no_image_is_zero_not_nan():
    online, q = _online_rows(0)
    _assert_zero_with_zero_gradients(byol_loss(q, torch.randn(0, 4), q, torch.randn(0, 4)), online)
