"""Data files that would mislead a run: images of 0x0 pixels, an npz whose header claims far more data than it
holds. Each is one line naming the file (issue 21, item 10)."""
import io
import zipfile

import numpy as np
import pytest

from tests.scripts.conftest import run_cli


def forged(path, claimed):
    """An npz whose x.npy header claims ``claimed`` images of 32x32x3 while it holds 4."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((4, 32, 32, 3), np.uint8))
    raw = buf.getvalue().replace(b"(4, 32, 32, 3)", f"({claimed}, 32, 32, 3)".encode())
    ys = io.BytesIO()
    np.lib.format.write_array(ys, np.zeros(4, np.int64))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", raw)
        archive.writestr("y.npy", ys.getvalue())


@pytest.mark.parametrize("case, says", [("empty-images", "0x0 pixels"), ("forged-header", "claims an array")])
def test_a_misleading_data_file_is_one_line_naming_it(workspace, case, says):
    folder = workspace / f"data-{case}" / "cifar10"
    folder.mkdir(parents=True)
    if case == "empty-images":
        np.savez(folder / "train.npz", x=np.zeros((8, 0, 0, 3), np.uint8), y=np.zeros(8, np.int64))
    else:
        forged(folder / "train.npz", 10**8)
    proc = run_cli("MAIN.py", ["--phase", "nc", "--dataset", "cifar10", "--model", "tiny", "--pretrained_encoder",
                               "encoder.pth", "--encoder_usage_info", "cifar10", "--data_dir", f"data-{case}",
                               "--log_dir", f"out-{case}", "--results_dir", f"out-{case}", "--monitor_every", "0",
                               "--device", "cpu"], workspace)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert says in line and "train.npz" in line and "--attack_size" not in line, line
