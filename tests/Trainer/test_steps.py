import pytest

from Trainer.common import guard_outputs
from UTILS.errors import UserError


def test_guard_outputs_refuses_then_overwrites(tmp_path):
    (tmp_path / "mask-pattern-3.npz").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        guard_outputs(tmp_path, ("mask-pattern-{int}.npz",), "--log_dir", overwrite=False, resume=False)
    assert guard_outputs(tmp_path, ("mask-pattern-{int}.npz",), "--log_dir", overwrite=False, resume=True)
    guard_outputs(tmp_path, ("mask-pattern-{int}.npz",), "--log_dir", overwrite=True, resume=False)
    assert not (tmp_path / "mask-pattern-3.npz").exists() and (tmp_path / "notes.txt").exists()


def test_an_input_under_an_output_name_is_refused_whatever_the_switches(tmp_path):
    (tmp_path / "model_5.pth").write_bytes(b"the clean encoder")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model_1.pth").symlink_to(tmp_path / "model_5.pth")
    for overwrite, resume in ((False, False), (True, False), (False, True)):
        with pytest.raises(UserError, match="--pretrained_encoder .*model_5.pth: is an input .*never overwritten"):
            guard_outputs(tmp_path, ("model_{int}.pth",), "--results_dir", overwrite=overwrite,
                          resume=resume, inputs={"--pretrained_encoder": str(tmp_path / "model_5.pth")})
    with pytest.raises(UserError, match="setting.txt"):  # a fixed name the stage writes counts too
        guard_outputs(tmp_path, ("model_{int}.pth",), "--results_dir", overwrite=True, resume=False,
                      inputs={"--reference_file": str(tmp_path / "setting.txt")}, writes=("setting.txt",))
    with pytest.raises(UserError, match="is an input"):  # a link in the folder to an input elsewhere
        guard_outputs(tmp_path / "elsewhere", ("model_{int}.pth",), "--results_dir", overwrite=True, resume=False,
                      inputs={"--pretrained_encoder": str(tmp_path / "elsewhere" / "model_1.pth")})
    assert (tmp_path / "model_5.pth").read_bytes() == b"the clean encoder"
    # an input under another name is kept, an earlier output is removed
    (tmp_path / "model_1.pth").write_bytes(b"earlier output")
    guard_outputs(tmp_path, ("model_1.pth",), "--results_dir", overwrite=True, resume=False,
                  inputs={"--pretrained_encoder": str(tmp_path / "model_5.pth")})
    assert (tmp_path / "model_5.pth").exists() and not (tmp_path / "model_1.pth").exists()
