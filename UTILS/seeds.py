"""Every seeded stream of a run, derived from ``--seed`` in this one place (torch-free; the table of streams:
docs/ALGORITHMS.md, "Seeds").

``--seed 0`` reproduces the paper's code's draws, most of which never depended on its ``--seed``; ``--seed N``
moves every such seeded counter by ``N * SEED_STRIDE`` so that other seeds give other runs. MAIN.py and
Unlearn-trigger.py take ``--seed`` as an index into the original's seed lists, the other scripts as the seed.
"""
from __future__ import annotations

from typing import Sequence

from UTILS.errors import fail

SEED_STRIDE = 1_000_000  # --seed N shifts every seeded counter by N * SEED_STRIDE (--seed 0: the original's draws)
MAIN_SEEDS = (1024, 557540351, 157301989, 100, 1234)  # MAIN.py's --seed indexes these (the original's list)
UNLEARN_SEEDS = (1024, 557540351, 157301989)  # Unlearn-trigger.py's --seed indexes these
LOADER_SEED = 100  # the paper's code reseeds torch's global RNG with 100 when its loader takes a --data_ratio < 1 share
FIRST_STEP_SEED = 100  # the original's per-step reshuffle/restart counter starts here and runs on across rounds
DEMO_STAGE_SEED = 100  # demo.py --seed N: pre-training, injection and the classifier run with --seed 100 + N


def seed_offset(seed_index: int) -> int:
    """Where a run's seeded counters start: 0 for ``--seed 0``, as in the paper's code, whose draws
    there never depend on ``--seed``; other seeds get streams of their own."""
    return seed_index * SEED_STRIDE


def global_seed(seed: int, seeds: Sequence[int] = ()) -> int:
    """The global RNGs' seed (Python, numpy, torch) at a stage's start: ``seeds[seed]`` where the original
    takes ``--seed`` as an index into a list (one line on an index outside it), else ``seed`` itself."""
    if not seeds:
        return seed
    if not 0 <= seed < len(seeds):
        fail(f"--seed {seed}: expected an index 0..{len(seeds) - 1} into the seed list {list(seeds)}")
    return seeds[seed]


def loader_reseed(seed_index: int) -> int:
    """torch's global seed right after a ``--data_ratio < 1`` share is loaded (the original reseeds there)."""
    return LOADER_SEED + seed_offset(seed_index)


def inversion_order_seed(seed_index: int) -> int:
    """MAIN.py's one shuffle of the inversion set (the original seeds torch with 100 before that loader)."""
    return LOADER_SEED + seed_offset(seed_index)


def attack_set_seed(seed_index: int, k: int) -> int:
    """Round ``k``'s attack-set draw (its shuffle and round 0's random start take the next seed)."""
    return seed_offset(seed_index) + k


def first_step_seed(seed_index: int) -> int:
    """Where the inversion's step counter starts (step s reshuffles with it + s, a restart's noise +1, +2)."""
    return FIRST_STEP_SEED + seed_offset(seed_index)


def random_start_seed(seed_index: int) -> int:
    """The one-round phases' (nc, detect) random start: numpy seeded with MAIN.py's seed (mod 2**32 there)."""
    return global_seed(seed_index, MAIN_SEEDS)


def demo_seeds(seed: int) -> dict[str, int]:
    """demo.py --seed N (0..4): the --seed each stage's script gets."""
    return {"pretrain": DEMO_STAGE_SEED + seed, "badencoder": DEMO_STAGE_SEED + seed,
            "classifier": DEMO_STAGE_SEED + seed, "main": seed, "unlearn": seed % len(UNLEARN_SEEDS)}
