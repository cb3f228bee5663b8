"""NT-Xent against a slow double loop written from the SimCLR paper's formula."""
import math

import pytest
import torch

from MODELS import nt_xent


def slow_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t), averaged over all 2B anchors."""
    z = torch.cat([z1, z2]).detach().double()  # a plain number: callers pass tensors that carry grad
    z = [v / v.norm() for v in z]
    n, b = len(z), len(z) // 2
    total = 0.0
    for i in range(n):
        j = i + b if i < b else i - b
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n


@pytest.mark.parametrize("batch,dim,t", [(2, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0)])
def test_matches_slow_loop(batch, dim, t):
    g = torch.Generator().manual_seed(batch)
    z1, z2 = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g) * 3
    assert nt_xent(z1, z2, t).item() == pytest.approx(slow_nt_xent(z1, z2, t), rel=1e-5)


def test_identical_views_give_lower_loss_and_gradients_flow():
    z1 = torch.randn(6, 4, requires_grad=True)
    same = nt_xent(z1, z1.detach().clone(), 0.5)
    other = nt_xent(z1, torch.randn(6, 4), 0.5)
    assert same.item() < other.item()
    same.backward()
    assert torch.isfinite(z1.grad).all()


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4), 0.5)
