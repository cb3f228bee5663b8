"""The seeded streams of UTILS/seeds.py: --seed 0 keeps the paper's code's values, other seeds move them."""
import pytest

from UTILS.errors import UserError
from UTILS.seeds import (MAIN_SEEDS, UNLEARN_SEEDS, attack_set_seed, demo_seeds, first_step_seed, global_seed,
                         inversion_order_seed, loader_reseed, random_start_seed, seed_offset)


def test_seed_zero_keeps_the_papers_values():
    assert seed_offset(0) == 0
    assert (loader_reseed(0), inversion_order_seed(0), first_step_seed(0)) == (100, 100, 100)
    assert [attack_set_seed(0, k) for k in range(3)] == [0, 1, 2]
    assert random_start_seed(0) == global_seed(0, MAIN_SEEDS) == 1024
    assert global_seed(2, UNLEARN_SEEDS) == 157301989 and global_seed(7) == 7


def test_other_seeds_move_every_counter_by_one_stride():
    stride = seed_offset(1)
    assert stride >= 10**5 and seed_offset(3) == 3 * stride  # far beyond a run's rounds and steps
    assert (loader_reseed(2), first_step_seed(2), attack_set_seed(2, 5)) == (100 + 2 * stride, 100 + 2 * stride,
                                                                              2 * stride + 5)
    assert random_start_seed(4) == 1234


def test_the_demo_gives_each_stage_its_seed():
    assert demo_seeds(4) == {"pretrain": 104, "badencoder": 104, "classifier": 104, "main": 4, "unlearn": 1}


def test_an_index_outside_the_list_is_one_line():
    with pytest.raises(UserError, match=r"--seed 5: expected an index 0\.\.4"):
        global_seed(5, MAIN_SEEDS)
    with pytest.raises(UserError):
        global_seed(-1, MAIN_SEEDS)
