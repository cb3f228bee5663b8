import io
import re
import sys

import pytest
import torch

from UTILS.errors import UserError
from UTILS.runtime import progress, resolve_device, rng_state, seed_everything, set_rng_state


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


class _Stream(io.StringIO):
    """A captured stderr that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _run_bars(monkeypatch, tty: bool, silence: str) -> str:
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("RECEIVE_NO_PROGRESS", silence)
    assert list(progress(range(50), desc="epoch 1")) == list(range(50))
    assert list(progress(iter(range(7)), desc="no length")) == list(range(7))
    for i in progress(range(10), desc="left early"):  # e.g. an early stop: no line for this bar
        if i == 3:
            break
    return stream.getvalue()


def test_progress_prints_one_plain_line_per_finished_bar_off_a_terminal(monkeypatch):
    out = _run_bars(monkeypatch, tty=False, silence="0")
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"epoch 1: 50/50 in \d+\.\ds", lines[0])
    assert re.fullmatch(r"no length: 7 in \d+\.\ds", lines[1])


def test_progress_keeps_the_live_bar_on_a_terminal(monkeypatch):
    out = _run_bars(monkeypatch, tty=True, silence="")
    assert "\repoch 1:" in out and "0/50" in out  # tqdm draws its bar and redraws it in place


def test_progress_is_silent_with_receive_no_progress(monkeypatch):
    assert _run_bars(monkeypatch, tty=False, silence="1") == ""
    assert _run_bars(monkeypatch, tty=True, silence="1") == ""
