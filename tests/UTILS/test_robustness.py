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


def test_atomic_writes_follow_the_umask_and_keep_an_existing_files_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        save_npz(tmp_path / "new.npz", x=np.zeros(1))
        os.umask(0o002)
        save_npz(tmp_path / "group.npz", x=np.zeros(1))
        (tmp_path / "new.npz").chmod(0o600)
        save_npz(tmp_path / "new.npz", x=np.ones(1))
    finally:
        os.umask(previous)
    assert (tmp_path / "group.npz").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "new.npz").stat().st_mode & 0o777 == 0o600


def test_a_write_error_hidden_inside_another_exception_is_one_line(tmp_path):
    """torch.save reports a full disk as a RuntimeError whose context is the OSError."""
    import errno

    def writer(handle):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    with pytest.raises(UserError, match="cannot write .*a.pth: No space left on device"):
        atomic_write(tmp_path / "a.pth", writer)
    assert not list(tmp_path.iterdir())


def test_a_folder_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    from UTILS.lock import LOCK_NAME, hold_folders

    with hold_folders([(tmp_path, "--log_dir"), (tmp_path / ".", "--results_dir")]):  # one folder, locked once
        holder = (tmp_path / LOCK_NAME).read_text().split()[0]
        assert holder == str(os.getpid())
        child = os.fork()
        if child == 0:  # another process: refused with the holder's pid
            try:
                with hold_folders([(tmp_path, "--log_dir")]):
                    os._exit(1)
            except UserError as exc:
                os._exit(0 if f"pid {holder}" in str(exc) else 3)
            os._exit(4)
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text("999999999 MAIN.py\n")  # left by a killed run: no flock holds it
    with hold_folders([(tmp_path, "--log_dir")]):
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_device_flags_accept_what_the_original_accepted():
    from UTILS.device_flags import device_choice, gpu_index

    assert gpu_index("1") == 1 and gpu_index("2,0") == 2 and gpu_index(" 3 ") == 3
    for bad in ("abc", "-1", "", "0,,1", "1.5", "²"):
        with pytest.raises(UserError, match="--gpu"):
            gpu_index(bad)
    assert device_choice("CUDA:01") == "cuda:1" and device_choice("") == "auto"
    for bad in ("cuda:-1", "cuda:abc", "tpu", "cuda:"):
        with pytest.raises(UserError, match="--device"):
            device_choice(bad)


def test_out_of_memory_becomes_one_line_naming_the_flags(capsys):
    @cli_entry(memory="--batch_size or --data_ratio")
    def main():
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes.")

    @cli_entry
    def other():
        raise RuntimeError("a bug, not memory")

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err.startswith("error: --batch_size or --data_ratio: out of memory on the CPU "
                                              "(tried to allocate 3.0 GiB); lower one of them")
    with pytest.raises(RuntimeError, match="a bug"):
        other()


def test_sigterm_outside_a_graceful_loop_aborts_with_one_line(capsys):
    @cli_entry
    def loading():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    with pytest.raises(SystemExit) as exc:
        loading()
    assert exc.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err.startswith("interrupted: SIGTERM: aborted")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
