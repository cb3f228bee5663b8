"""How ``--seed`` becomes the runs' seeded streams (torch-free).

``--seed 0`` reproduces the paper's code's draws, which never depended on its ``--seed``; ``--seed N`` moves
every seeded counter by ``N * SEED_STRIDE`` so that other seeds give other runs.
"""
from __future__ import annotations

SEED_STRIDE = 1_000_000  # --seed N shifts every seeded counter by N * SEED_STRIDE (--seed 0: the original's draws)


def seed_offset(seed_index: int) -> int:
    """Where a run's seeded counters start: 0 for ``--seed 0``, as in the paper's code, whose draws
    there never depend on ``--seed``; other seeds get streams of their own."""
    return seed_index * SEED_STRIDE
