"""CIFAR batches are pickles: a crafted file must not run code, only rebuild arrays."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from DATASETS import load_split
from DATASETS.tv_layout import SafeUnpickler
from tests.DATASETS import writers
from UTILS.errors import UserError


class _OpensFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsShell:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.mark.parametrize("payload", [_OpensFile, _RunsShell])
def test_crafted_batch_runs_no_code(tmp_path, payload):
    writers.write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    entry = {b"data": payload(str(marker)), b"labels": [0]}
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump(entry, handle)
    with pytest.raises(UserError, match="test_batch"):
        load_split("cifar10", "test", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_arrays_and_containers_round_trip(protocol):
    obj = {b"data": np.arange(24, dtype=np.uint8).reshape(2, 12), "labels": [1, 2], "f": np.float32(1.5),
           "names": [b"a.png", "b"], "t": (1, 2.5), "i64": np.arange(3, dtype=np.int64)}
    got = SafeUnpickler(io.BytesIO(pickle.dumps(obj, protocol=protocol)), encoding="latin1").load()
    np.testing.assert_array_equal(got[b"data"], obj[b"data"])
    np.testing.assert_array_equal(got["i64"], obj["i64"])
    assert got["labels"] == [1, 2] and got["names"] == [b"a.png", "b"] and got["f"] == 1.5


def test_other_globals_refused():
    data = pickle.dumps({"x": np.random.default_rng})  # a harmless global, still not on the list
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        SafeUnpickler(io.BytesIO(data)).load()
