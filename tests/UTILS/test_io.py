import os

import numpy as np
import pytest

from UTILS.errors import UserError
from UTILS.io import atomic_write, ensure_writable_dir, load_npz, read_csv, save_npz, write_csv, write_json


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def broken(handle):
        handle.write(b"half of a new fi")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left behind


def test_save_npz_is_byte_identical_and_loads_without_pickle(tmp_path):
    arrays = {"mask": np.random.default_rng(0).random((3, 4, 4)).astype(np.float32), "idx": np.int64(3)}
    save_npz(tmp_path / "a.npz", **arrays)
    save_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_npz(tmp_path / "a.npz", ["mask"], "--re_mask_pattern")
    assert np.array_equal(loaded["mask"], arrays["mask"]) and int(loaded["idx"]) == 3


def test_load_npz_errors_name_the_flag_and_file(tmp_path):
    with pytest.raises(UserError, match=r"--trigger_file .*missing\.npz: file not found"):
        load_npz(tmp_path / "missing.npz", ["t"], "--trigger_file")
    np.savez(tmp_path / "k.npz", x=np.zeros(2))
    with pytest.raises(UserError, match=r"lacks key\(s\) \['t', 'tm'\]"):
        load_npz(tmp_path / "k.npz", ["t", "tm"], "--trigger_file")
    np.savez(tmp_path / "obj.npz", t=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="pickled objects"):
        load_npz(tmp_path / "obj.npz", ["t"], "--trigger_file")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match="not a readable npz"):
        load_npz(tmp_path / "junk.npz", ["t"], "--trigger_file")


def test_csv_and_json_round_trip_exact_floats(tmp_path):
    rows = [{"round": 0, "l1": 0.1 + 0.2, "acc": float("nan")}, {"round": 1, "l1": 1 / 3, "acc": 50.0}]
    write_csv(tmp_path / "m.csv", rows)
    back = read_csv(tmp_path / "m.csv")
    assert float(back[0]["l1"]) == 0.1 + 0.2 and float(back[1]["l1"]) == 1 / 3 and back[0]["acc"] == "nan"
    write_json(tmp_path / "m.json", {"b": 1, "a": [1.5]})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'


def test_ensure_writable_dir(tmp_path):
    assert ensure_writable_dir(tmp_path / "new" / "dir", "--log_dir").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--log_dir"):
        ensure_writable_dir(tmp_path / "file", "--log_dir")


def test_json_writer_writes_null_for_nan_and_keeps_finite_numbers_as_text(tmp_path):
    import json
    import math

    import numpy as np

    from UTILS.io import write_json

    path = write_json(tmp_path / "a.json", {"a": float("nan"), "b": [1.5, float("-inf"), np.float32("nan")],
                                           "c": np.float64(0.1), "d": np.float32(2.0), "e": (math.inf,)})
    assert json.loads(path.read_text(), parse_constant=lambda t: pytest.fail(t)) == \
        {"a": None, "b": [1.5, None, None], "c": 0.1, "d": 2.0, "e": [None]}
    with pytest.raises(ValueError):  # a non-finite number hidden from json_safe fails instead of writing NaN
        write_json(tmp_path / "b.json", {"x": _NanScalar()})
    assert not (tmp_path / "b.json").exists()


class _NanScalar:
    def __float__(self) -> float:
        return float("nan")
