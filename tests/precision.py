"""Helpers for equivalence tests that must pass on any CPU (the suite's rule: an equivalence test runs in
float64, or first asserts that what it compares is far above its dtype's rounding).

float64 rounds at 1.1e-16 relative; a few thousand accumulated roundings stay below 1e-12 of the
largest term. A tolerance of ``REL64`` (1e-9) relative to the compared values' scale is therefore a
million times above float64 rounding on any CPU, and a million times below a real difference of
algorithm (which shows at 1e-3 or more)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

REL64 = 1e-9     # float64 comparisons of two computation orders, relative to the compared values' scale
FLOOR64 = 1e-6   # the least largest-magnitude of a compared tensor: the tests' losses are O(1), so their
                 # float64 rounding is ~1e-16 absolute, ten orders of magnitude below


def calibrated(model: nn.Module, side: int, *, passes: int = 2, batch: int = 4) -> nn.Module:
    """Set the BatchNorm statistics of a random-weight ``model`` from data (train-mode passes on uniform
    (batch, 3, side, side) images, cumulative average), then return it in eval mode: its features then
    differ between images as a trained encoder's do, instead of collapsing to one vector (a saturated
    psim whose gradient is rounding noise). Uses and advances torch's global RNG; keeps the model's dtype."""
    dtype = next(model.parameters()).dtype
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the passes
            m.reset_running_stats()
    with torch.no_grad():
        for _ in range(passes):
            model(torch.rand(batch, 3, side, side, dtype=dtype))
    return model.eval()


def assert_close64(got: Tensor, want: Tensor, *, what: str = "") -> None:
    """float64 ``got`` equals ``want`` up to ``REL64`` of ``want``'s largest magnitude, which must itself be
    above ``FLOOR64`` (so the comparison is of a real value, not of rounding noise)."""
    assert got.dtype == torch.float64 and want.dtype == torch.float64, (what, got.dtype, want.dtype)
    scale = want.abs().max().item()
    assert scale > FLOOR64, f"{what}: compared values at most {scale:.3g}, too small to compare"
    err = (got - want).abs().max().item()
    assert err <= REL64 * scale, f"{what}: max |difference| {err:.3g} > {REL64:g} x {scale:.3g}"
