"""Normalisation statistics and normalize()."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms import Normalize

from DATASETS import USAGE, get_usage, normalize
from DATASETS.usage import USAGE_NAMES
from UTILS.errors import UserError


def test_table_values():
    assert USAGE["cifar10"].mean == (0.4914, 0.4822, 0.4465) and USAGE["cifar10"].std == (0.2471, 0.2435, 0.2616)
    assert USAGE["stl10"].mean == (0.44087798, 0.42790666, 0.38678814)
    assert USAGE["stl10"].std == (0.25507198, 0.24801506, 0.25641308)
    assert USAGE["svhn"].mean == (0.43768210, 0.44376970, 0.47280442)
    assert USAGE["svhn"].std == (0.19803012, 0.20101562, 0.19703614)
    assert USAGE["gtsrb"].mean == (0, 0, 0) and USAGE["gtsrb"].std == (1, 1, 1)
    assert USAGE["imagenet"].mean == (0.485, 0.456, 0.406) and USAGE["imagenet"].size == 224
    assert {u.size for k, u in USAGE.items() if k not in ("imagenet", "clip")} == {32}
    assert all(u.name == k for k, u in USAGE.items())


def test_get_usage_unknown_lists_known():
    assert get_usage("CIFAR10") is USAGE["cifar10"]
    with pytest.raises(UserError) as err:
        get_usage("mnist")
    msg = str(err.value)
    assert msg.startswith("--encoder_usage_info mnist") and all(k in msg for k in USAGE_NAMES)
    with pytest.raises(UserError, match="--usage"):
        get_usage("x", flag="--usage")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_matches_torchvision_and_is_differentiable(dtype):
    x = torch.rand(4, 3, 5, 5, dtype=dtype, requires_grad=True)
    u = USAGE["stl10"]
    out = normalize(x, u)
    assert out.dtype == dtype and out.device == x.device
    torch.testing.assert_close(out, Normalize(u.mean, u.std)(x))
    out.sum().backward()
    torch.testing.assert_close(x.grad[:, 0], torch.full((4, 5, 5), 1 / u.std[0], dtype=dtype))
