"""``--amp``: the encoder's forward (and so its backward) in bfloat16 autocast with channels_last.

Only the encoder runs in bf16. Its outputs come back as float32, so everything the paper defines on
features (psim, the mask L1 and cost schedule, the Wasserstein shift, NT-Xent, the cosine unlearning
term, kNN) and every optimiser step stay float32. Without ``--amp`` the module is returned as is:
the exact float32 path is untouched, bit for bit.

bf16 rather than fp16: same exponent range as float32, so no loss scaling and no overflow in the
unnormalised features the Wasserstein shift compares.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from UTILS.errors import fail
from UTILS.runtime import log, warn

AMP_DTYPE = torch.bfloat16
# Set to 1 to act as if the CPU had no native bfloat16 (the warning and its code path), e.g. to test
# that path on a machine that has AVX512-BF16/AMX. Read only by cpu_has_native_bf16.
FORCE_NO_BF16_ENV = "RECEIVE_FORCE_NO_BF16"


def _to_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to_float(v) for v in value)
    return value


class Autocast(nn.Module):
    """Runs ``inner`` under bf16 autocast on channels_last input; float32 outputs.

    Parameters, buffers, train/eval mode and gradients are the inner module's own (nothing is
    copied), so optimisers built on ``inner.parameters()`` keep working.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    # The mode is the inner module's: helpers that save ``module.training`` and restore it later
    # (extract_features, frozen, ...) must not flip an eval-mode encoder into train mode.
    @property
    def training(self) -> bool:  # type: ignore[override]
        """Mirrors the wrapped module's mode, so ``.training`` reads the same with or without --amp."""
        inner = self.__dict__.get("_modules", {}).get("inner")
        return inner.training if inner is not None else True

    @training.setter
    def training(self, mode: bool) -> None:
        """Ignored: the mode lives in the wrapped module (see the getter)."""
        pass  # train()/eval() reach the inner module through the children loop of nn.Module.train

    def forward(self, x: torch.Tensor) -> Any:
        """The wrapped module on ``x`` (B, 3, H, W) in bf16 autocast, channels-last; float32 outputs."""
        x = x.contiguous(memory_format=torch.channels_last)  # (B, 3, H, W), NHWC in memory
        with torch.autocast(device_type=x.device.type, dtype=AMP_DTYPE):
            out = self.inner(x)
        return _to_float(out)


def with_precision(module: nn.Module, amp: bool) -> nn.Module:
    """``module`` itself (amp off), or an :class:`Autocast` view of it (amp on).

    With amp the module's 4-D weights are moved to channels_last in place (the layout bf16
    convolutions are fastest in); their values and the checkpoint keys do not change.
    """
    if not amp:
        return module
    if isinstance(module, Autocast):
        return module
    module.to(memory_format=torch.channels_last)
    return Autocast(module)


def unwrap(module: nn.Module) -> nn.Module:
    """The module an :class:`Autocast` view runs (for parameter names in messages), else itself."""
    return module.inner if isinstance(module, Autocast) else module


def amp_supported(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 autocast can run on ``device``, and why not."""
    if device.type == "cuda":
        major = torch.cuda.get_device_properties(device).major
        if torch.version.hip is None and major < 8:  # older GPUs only emulate bf16: slower, not faster
            name = torch.cuda.get_device_name(device)
            return False, (f"{name} (compute capability {major}.x) has no native bfloat16; "
                           f"it needs 8.0 (Ampere) or newer")
        return True, ""
    if device.type == "cpu":
        return True, ""  # runs everywhere; cpu_has_native_bf16 says whether it will be fast
    return False, f"bfloat16 autocast is not set up for {device.type}"


def cpu_has_native_bf16() -> bool:
    """Whether the CPU advertises bf16 instructions (Linux /proc/cpuinfo; False where unknown, or when
    ``RECEIVE_FORCE_NO_BF16=1``)."""
    if os.environ.get(FORCE_NO_BF16_ENV, "") not in ("", "0"):
        return False
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def check_amp(amp: bool, device: torch.device) -> bool:
    """Validate ``--amp`` for the resolved device (one-line error if it cannot run) and say it is on."""
    if not amp:
        return False
    ok, why = amp_supported(device)
    if not ok:
        fail(f"--amp: {why}; run without --amp (exact float32)")
    if device.type == "cpu" and not cpu_has_native_bf16():
        warn("--amp: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so bf16 is emulated and may be "
             "slower than float32; compare with python bench/bench.py --stages amp-inversion")
    log(f"--amp: encoder forward/backward in bfloat16 autocast, channels_last, on {device}; "
        f"losses, trigger and optimiser stay float32")
    return True
