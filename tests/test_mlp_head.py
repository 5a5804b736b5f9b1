import copy

import pytest
import torch
from torch import nn

from scrl import MLPHead


def test_presets_have_the_paper_shapes():
    projector, predictor = MLPHead.projector(2048), MLPHead.predictor()
    assert (projector.fc1.in_features, projector.fc1.out_features, projector.fc2.out_features) == (2048, 4096, 256)
    assert (predictor.fc1.in_features, predictor.fc1.out_features, predictor.fc2.out_features) == (256, 4096, 256)
    # BYOL's and the authors' heads: the hidden layer has a bias (BatchNorm follows), the output none.
    for head in (projector, predictor):
        assert head.fc1.bias is not None and head.fc2.bias is None
        assert [name for name, _ in head.named_parameters()] == ["fc1.weight", "fc1.bias", "bn.weight", "bn.bias", "fc2.weight"]
    assert isinstance(projector.bn, nn.BatchNorm1d) and projector.bn.num_features == 4096
    assert [type(m) for m in projector.children()] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_masked_rows_neither_shape_statistics_nor_valid_outputs():
    torch.manual_seed(0)
    head = MLPHead(16, 32, 8)
    reference = copy.deepcopy(head)
    x = torch.randn(12, 16, requires_grad=True)
    mask = torch.tensor([True, False, True, True, False, False, True, True, True, False, True, True])
    out = head(x, mask)
    x_valid = x.detach()[mask].requires_grad_(True)
    expected = reference(x_valid)
    torch.testing.assert_close(out[mask], expected)
    torch.testing.assert_close(head.bn.running_mean, reference.bn.running_mean)
    torch.testing.assert_close(head.bn.running_var, reference.bn.running_var)
    assert head.bn.num_batches_tracked == reference.bn.num_batches_tracked == 1

    grad = torch.randn_like(expected)
    out[mask].backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad[mask], x_valid.grad)
    assert x.grad[~mask].abs().sum() == 0
    torch.testing.assert_close(head.fc1.weight.grad, reference.fc1.weight.grad)
    torch.testing.assert_close(head.bn.weight.grad, reference.bn.weight.grad)

    x2 = x.detach().clone()
    x2[~mask] = 1e3  # junk in masked-out rows changes nothing in the valid ones
    torch.testing.assert_close(head(x2, mask)[mask], head(x.detach(), mask)[mask])


def test_no_valid_row_gives_finite_output_and_keeps_running_statistics():
    head = MLPHead(4, 8, 2)
    out = head(torch.randn(3, 4), torch.zeros(3, dtype=torch.bool))
    assert torch.isfinite(out).all()
    assert head.bn.running_mean.abs().sum() == 0 and (head.bn.running_var == 1).all()


def test_eval_mode_uses_running_statistics_with_or_without_mask():
    head = MLPHead(4, 8, 2).eval()
    x = torch.randn(5, 4)
    torch.testing.assert_close(head(x, torch.tensor([True, False, True, False, False])), head(x))


def test_sync_batchnorm_conversion_keeps_the_mask_working_in_one_process():
    torch.manual_seed(0)
    head = MLPHead(4, 8, 2)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(head))
    x, mask = torch.randn(6, 4), torch.tensor([True, True, False, True, False, True])
    torch.testing.assert_close(synced(x, mask), head(x, mask))


def test_bad_arguments():
    with pytest.raises(ValueError, match="hidden_dim"):
        MLPHead(4, 0, 2)
    with pytest.raises(ValueError, match="mask"):
        MLPHead(4, 8, 2)(torch.randn(3, 4), torch.ones(4, dtype=torch.bool))
