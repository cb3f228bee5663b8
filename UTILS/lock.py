"""One run per output folder: a lock file that names its owner, released when the run ends.

Two runs writing into one folder at once would mix their files (one run's metrics.json naming a
round whose trigger the other run wrote). Each run therefore holds ``<folder>/.receive.lock`` for as
long as it runs: an exclusive ``flock`` on the file, which the kernel drops when the process dies
(so a lock left by a killed run is stale and simply taken over), and the owner's pid and command in
the file, so the second run can say who holds the folder. Where ``flock`` is not supported, the pid
alone decides: a lock whose process is gone is stale.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from UTILS.errors import fail
from UTILS.io import pid_alive
from UTILS.launch import env_is_main

LOCK_NAME = ".receive.lock"
T = TypeVar("T")


class FolderLock:
    """The exclusive hold of one output folder (``flag`` names it in messages)."""

    def __init__(self, folder: Path, flag: str) -> None:
        self.folder, self.flag = Path(folder), flag
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the folder, or fail with one line naming the run that holds it."""
        while self.fd is None:
            fd = self._open()
            if not self._lock(fd):
                owner = _read(fd)
                os.close(fd)
                if _pid(owner) == os.getpid():  # this run holds it already, through another name of the folder
                    return
                fail(f"{self.flag} {self.folder}: another run is writing into this folder ({_describe(owner)}); "
                     f"wait for it to end, or choose another {self.flag}")
            if not _same_file(fd, self.path):  # the previous owner removed it between our open and lock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {' '.join(sys.argv[:1])}\n".encode(errors="surrogateescape"))
            self.fd = fd

    def _open(self) -> int:
        """The lock file's descriptor: a plain file of this folder, created or taken over, never a link.

        O_NOFOLLOW: a symbolic link at the lock path (to the run's own encoder, to any file, or dangling) is
        refused, never written through; a hard link (a second name of some other file) likewise. A lock left by
        an earlier run is a plain file with one name, and is taken over."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP or self.path.is_symlink():
                fail(f"{self.flag} {self.folder}: {self.path} is a symbolic link (to {_target(self.path)}); "
                     f"a run's lock file is a plain file it creates itself and is never written through a link: "
                     f"remove the link, or choose another {self.flag}")
            fail(f"{self.flag} {self.folder}: cannot create the lock file {LOCK_NAME} ({exc.strerror or exc})")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            what = "is not a plain file" if not stat.S_ISREG(info.st_mode) else \
                f"is a hard link ({info.st_nlink} names for one file)"
            fail(f"{self.flag} {self.folder}: {self.path} {what}; a run's lock file is a plain file it creates "
                 f"itself and is never written through a link: remove it, or choose another {self.flag}")
        return fd

    def _lock(self, fd: int) -> bool:
        """True once this process holds ``fd`` exclusively; False when a live run holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        pid = _pid(_read(fd))  # no flock here (some network file systems): trust the pid in the file
        return pid is None or pid == os.getpid() or not pid_alive(pid)

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no third run can slip in) and let go."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # a folder gone read-only: the lock is dropped with the descriptor anyway
        os.close(self.fd)
        self.fd = None


def _target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 4096).decode(errors="replace").strip()
    except OSError:
        return ""


def _pid(text: str) -> int | None:
    head = text.split(maxsplit=1)[0] if text else ""
    return int(head) if head.isdigit() else None


def _describe(owner: str) -> str:
    pid = _pid(owner)
    if pid is None:
        return "its pid is not recorded yet"
    what = owner.split(maxsplit=1)[1] if len(owner.split(maxsplit=1)) > 1 else ""
    return f"pid {pid}" + (f", {Path(what).name}" if what else "")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def hold_folders(folders: Sequence[tuple[Path, str]]) -> Iterator[None]:
    """Hold every (folder, flag) for the duration of the block; a folder named twice is locked once."""
    locks: list[FolderLock] = []
    seen: set[tuple[int, int]] = set()
    try:
        for folder, flag in folders:
            info = os.stat(folder)  # device + inode: one folder under two names (a bind mount, a link) is one
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
            lock = FolderLock(Path(folder), flag)
            lock.acquire()
            locks.append(lock)
        yield
    finally:
        for lock in reversed(locks):
            lock.release()


def holding(*fields: tuple[str, str]) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a stage ``run(cfg)``: create the folders named by ``cfg.<field>`` (checked writable), hold
    them for the whole run, then call it. ``fields``: (config field, flag), e.g. ("log_dir", "--log_dir").

    Under torchrun only rank 0 writes files, so only rank 0 creates and holds the folders."""
    def decorate(run: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(run)
        def wrapper(cfg, *args, **kwargs) -> T:
            from UTILS.io import ensure_writable_dir  # numpy: after the command line has been checked

            if not env_is_main():
                return run(cfg, *args, **kwargs)

            folders = [(ensure_writable_dir(getattr(cfg, name), flag), flag) for name, flag in fields]
            with hold_folders(folders):
                return run(cfg, *args, **kwargs)

        return wrapper

    return decorate
