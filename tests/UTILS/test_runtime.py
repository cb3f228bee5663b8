import pytest
import torch

from UTILS.errors import UserError
from UTILS.runtime import resolve_device, rng_state, seed_everything, set_rng_state


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu", 0, verbose=False) == torch.device("cpu")
    auto = resolve_device("auto", 2, verbose=False)
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_resolve_device_rejects_nonsense_and_missing_cuda():
    with pytest.raises(UserError, match="--device tpu"):
        resolve_device("tpu", 0, verbose=False)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0", 0, verbose=False)


def test_rng_state_round_trip_repeats_the_draws():
    seed_everything(7)
    state = rng_state()
    first = torch.rand(5)
    set_rng_state(state)
    assert torch.equal(torch.rand(5), first)
    seed_everything(7)
    assert torch.equal(torch.rand(5), first)
