"""Run an entry script's command line in a process forked from a warm "zygote" that has already
imported torch and the project, so a test of a bad command line costs a fork instead of a 3-second
interpreter start.

The child is a real process: ``sys.argv`` is the command line, the script file runs as ``__main__``
(argparse, ``cli_entry``, exit code), and its file descriptors 1 and 2 go to files that come back as
``stdout``/``stderr``, exactly what a user's terminal shows. Only the interpreter start-up is shared.
The zygote imports modules but never computes, so forking it is safe for torch's thread pools.
``tests/scripts/test_bad_input.py::test_fast_runner_matches_a_real_interpreter`` checks that both ways
print the same thing.
"""
from __future__ import annotations

import atexit
import json
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRELOAD = ("torch", "torchvision", "Trainer.main_flow", "Trainer.unlearn", "Trainer.downstream", "Trainer.configs",
           "Trainer.moth", "Trainer.nc", "EVALUATION.downstream", "DATASETS.augment", "Trainer.pretrain",
           "Trainer.badencoder", "DEMO.demo", "DEMO.report_inputs")
# One intra-op thread: on a shared 2-core machine OpenMP's spinning threads make tiny convolutions
# 100x slower; every run a test compares with another uses this same environment.
ENV = {"RECEIVE_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# The zygote needs a plain fork() (Linux); elsewhere, or with RECEIVE_TEST_NO_FORK=1, every run starts
# a fresh interpreter instead (slower, same results; the fault-injection tests are skipped).
FORK = sys.platform.startswith("linux") and os.environ.get("RECEIVE_TEST_NO_FORK", "") in ("", "0")

_zygote: subprocess.Popen | None = None
_lock = threading.Lock()


def _child(script: str, args: list[str], cwd: str, out_path: str, err_path: str, inject: str | None = None,
           env: dict | None = None) -> int:
    """Body of the forked child: what ``python <script> <args>`` does after start-up."""
    os.chdir(cwd)
    os.environ.update(ENV)
    os.environ.update(env or {})
    for fd, path in ((1, out_path), (2, err_path)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).parent)
    code = 0
    try:
        if inject:  # a test's fault injection, e.g. "tests.scripts.faults:nan_unlearn_loss_in_epoch_2"
            module, name = inject.split(":")
            getattr(__import__(module, fromlist=[name]), name)()
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve() -> None:
    """The zygote: import once, then fork one child per request line read from stdin."""
    for name in PRELOAD:
        __import__(name)
    requests, replies = sys.stdin, sys.stdout
    replies.write("ready\n")
    replies.flush()
    for line in requests:
        req = json.loads(line)
        if "wait" in req:  # {"wait": pid, "block": bool} -> {"rc": code or None while it runs}
            pid, status = os.waitpid(req["wait"], 0 if req["block"] else os.WNOHANG)
            reply = {"rc": os.waitstatus_to_exitcode(status) if pid else None}
        else:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _child(req["script"], req["args"], req["cwd"], req["out"], req["err"], req.get("inject"),
                                  req.get("env"))
                finally:
                    os._exit(code)
            if req.get("background"):
                reply = {"pid": pid}
            else:
                _, status = os.waitpid(pid, 0)
                reply = {"rc": os.waitstatus_to_exitcode(status)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _start() -> subprocess.Popen:
    global _zygote
    if _zygote is None or _zygote.poll() is not None:
        _zygote = subprocess.Popen([sys.executable, "-c", "from tests.scripts.fastcli import serve; serve()"],
                                   cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   env=dict(os.environ, **ENV, PYTHONPATH=str(ROOT)))
        if _zygote.stdout.readline().strip() != "ready":
            raise RuntimeError("the fast CLI runner's zygote failed to start")
        atexit.register(_stop)
    return _zygote


def _stop() -> None:
    if _zygote is not None and _zygote.poll() is None:
        _zygote.stdin.close()
        _zygote.wait(timeout=30)


def _ask(request: dict) -> dict:
    zygote = _start()
    zygote.stdin.write(json.dumps(request) + "\n")
    zygote.stdin.flush()
    return json.loads(zygote.stdout.readline())


def _interpreter(script: str, args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """The fallback: a fresh interpreter, as a user starts it."""
    return subprocess.Popen([sys.executable, str(ROOT / script), *[str(a) for a in args]], cwd=cwd,
                            env=dict(os.environ, **ENV, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class FastProcess:
    """A script running in the background in a child of the zygote (a real process: signal it by pid)."""

    def __new__(cls, script: str, args: list[str], cwd: Path):
        if not FORK:
            return _interpreter(script, args, cwd)
        return super().__new__(cls)

    def __init__(self, script: str, args: list[str], cwd: Path) -> None:
        self.args = [script, *args]
        self._tmp = tempfile.TemporaryDirectory(prefix="fastcli-")
        self._out, self._err = os.path.join(self._tmp.name, "stdout"), os.path.join(self._tmp.name, "stderr")
        with _lock:
            self.pid = _ask({"script": str(ROOT / script), "args": [str(a) for a in args], "cwd": str(cwd),
                             "out": self._out, "err": self._err, "background": True})["pid"]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with _lock:
                self.returncode = _ask({"wait": self.pid, "block": False})["rc"]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(9)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        if self.returncode is None:
            with _lock:
                self.returncode = _ask({"wait": self.pid, "block": True})["rc"]
        out, err = Path(self._out).read_text(), Path(self._err).read_text()
        self._tmp.cleanup()
        return out, err


def run_fast(script: str, args: list[str], cwd: Path, inject: str | None = None,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """Like ``conftest.run_cli`` (same result type), in a child forked from the warm zygote.

    ``inject`` ("module:function") is called in the child first: a fault injection for failures that no
    command line provokes reliably (e.g. a NaN loss in a given epoch). ``env`` adds environment
    variables for this run only (read by the project at run time, not at import).
    """
    if not FORK:
        if inject:
            import pytest
            pytest.skip("fault injection needs the forking runner (Linux)")
        proc = _interpreter(script, args, cwd, env)
        out, err = proc.communicate(timeout=600)
        return subprocess.CompletedProcess([script, *args], proc.returncode, out, err)
    with _lock, tempfile.TemporaryDirectory(prefix="fastcli-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        rc = _ask({"script": str(ROOT / script), "args": [str(a) for a in args], "cwd": str(cwd), "out": out,
                   "err": err, "inject": inject, "env": env or {}})["rc"]
        return subprocess.CompletedProcess([script, *args], rc, Path(out).read_text(), Path(err).read_text())
