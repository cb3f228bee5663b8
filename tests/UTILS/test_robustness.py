"""UTILS pieces of the robustness work: atomic writes, stale temporaries, one-line argparse errors,
the two-stage Ctrl-C handler and the exit codes of cli_entry."""
import os
import signal

import numpy as np
import pytest

from UTILS.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, ArgumentParser, Interrupted, UserError, cli_entry
from UTILS.io import atomic_write, ensure_writable_dir, remove_stale_temps, save_npz
from UTILS.signals import graceful_stop


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "a.npz"
    save_npz(path, x=np.arange(3))
    before = path.read_bytes()

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_identical_arrays_give_identical_npz_bytes(tmp_path):
    save_npz(tmp_path / "a.npz", mask=np.ones((3, 4, 4), np.float32), idx=np.asarray(2))
    save_npz(tmp_path / "b.npz", mask=np.ones((3, 4, 4), np.float32), idx=np.asarray(2))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_write_errors_become_one_line_user_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write .*file/out.npz"):
        save_npz(tmp_path / "file" / "out.npz", x=np.zeros(1))
    with pytest.raises(UserError, match="--log_dir .*exists and is not a directory|cannot create"):
        ensure_writable_dir(tmp_path / "file", "--log_dir")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = tmp_path / f".mask-pattern-3.npz.{dead}.abcd1234.tmp"
    live = tmp_path / f".metrics.csv.{os.getpid()}.abcd1234.tmp"
    other = tmp_path / ".hidden.tmp"
    for p in (stale, live, other):
        p.write_text("x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and other.exists()


def test_argparse_errors_are_one_line(capsys):
    parser = ArgumentParser(prog="X.py")
    parser.add_argument("--n", type=int)

    @cli_entry
    def main(argv):
        return parser.parse_args(argv)

    with pytest.raises(SystemExit) as exc:
        main(["--n", "two"])
    assert exc.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: argument --n: invalid int value: 'two' (see X.py --help)\n"


def test_cli_entry_exit_codes(capsys):
    @cli_entry
    def stopped():
        raise Interrupted("Ctrl-C (SIGINT): stopped after round 3; resume with the same command plus --resume")

    @cli_entry
    def aborted():
        raise KeyboardInterrupt

    for fn in (stopped, aborted):
        with pytest.raises(SystemExit) as exc:
            fn()
        assert exc.value.code == EXIT_INTERRUPTED
        err = capsys.readouterr().err
        assert err.startswith("interrupted: ") and err.count("\n") == 1 and "--resume" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_asks_to_stop_second_aborts(sig, capsys):
    previous = signal.getsignal(sig)
    with graceful_stop("round") as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal == sig
        assert "finishing the current round" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is previous
