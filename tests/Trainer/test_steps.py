import pytest

from Trainer.common import guard_outputs
from UTILS.errors import UserError


def test_guard_outputs_refuses_then_overwrites(tmp_path):
    (tmp_path / "mask-pattern-3.npz").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        guard_outputs(tmp_path, ("mask-pattern-*.npz",), "--log_dir", overwrite=False, resume=False)
    assert guard_outputs(tmp_path, ("mask-pattern-*.npz",), "--log_dir", overwrite=False, resume=True)
    guard_outputs(tmp_path, ("mask-pattern-*.npz",), "--log_dir", overwrite=True, resume=False)
    assert not (tmp_path / "mask-pattern-3.npz").exists() and (tmp_path / "notes.txt").exists()
