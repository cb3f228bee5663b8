"""``--gpu`` and ``--device`` read from the command line, without importing torch (so a bad value is
reported at once, before the slow imports)."""
from __future__ import annotations

from UTILS.errors import fail

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _index(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def gpu_index(value: str) -> int:
    """The device index ``--gpu`` names. The original put ``--gpu`` into CUDA_VISIBLE_DEVICES, so one
    index or a comma-separated list of them ran; a list runs on its first device, as it did there."""
    indices = [_index(part) for part in str(value).split(",")]
    if not indices or None in indices:
        fail(f"--gpu {value}: expected a CUDA device index (0, 1, ...) or a comma-separated list of them (the first "
             f"is used); for the CPU pass --device cpu")
    return indices[0]


def device_choice(value: str) -> str:
    """``--device`` normalised to auto, cpu, cuda or cuda:N; anything else is one line."""
    choice = (value or "auto").strip().lower()
    if choice in DEVICE_CHOICES:
        return choice
    index = _index(choice[len("cuda:"):]) if choice.startswith("cuda:") else None
    if index is None:
        fail(f"--device {value}: expected auto, cpu, cuda or cuda:N (N a device index 0, 1, ...)")
    return f"cuda:{index}"
