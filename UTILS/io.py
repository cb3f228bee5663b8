"""File I/O: atomic writes, safe npz/CSV/JSON, output-directory checks."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from UTILS.errors import fail

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write through a temporary file in the same directory, fsync, then rename over ``path``.

    A crash leaves either the old file or the new one under the final name, never half of one. The
    file gets the permissions a plain ``open(path, "w")`` would give it: those of the file it
    replaces, else 0666 minus the umask (the temporary file alone would be 0600).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = _mode_for(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, mode)
        with _open_temp(fd, path) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        cause = os_error_in(exc) if isinstance(exc, Exception) else None  # an interrupt stays one
        if cause is not None:  # disk full, read-only, permission: one line naming the file
            fail(f"cannot write {path}: {cause.strerror or cause}; the previous version of the file, if any, "
                 f"is intact")
        raise
    return path


def _open_temp(fd: int, path: Path) -> io.BufferedWriter:
    """The handle the writer gets (a seam for the tests' disk-full fault injection; ``path`` is the target)."""
    return os.fdopen(fd, "wb")


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``, if any: ``exc`` itself, or one it was raised from or while handling.

    torch.save turns a failed write (disk full) into a RuntimeError ("unexpected pos ...") whose
    context is the real OSError; the user needs the latter.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _mode_for(path: Path) -> int:
    """Permission bits for a file written at ``path``: kept from the file it replaces, else 0666 & ~umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~current_umask()


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask can only set it)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # set-and-restore; the lock keeps two writer threads from seeing each other's 0
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files that :func:`atomic_write` left behind when its process was killed.

    Names are ``.<file>.<pid>.<random>.tmp``; a file whose process is still alive (another run writing
    into the same folder) is left alone.
    """
    removed = []
    for tmp in Path(directory).glob(f".*{TMP_SUFFIX}"):
        parts = tmp.name[: -len(TMP_SUFFIX)].rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit() or pid_alive(int(parts[1])):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process counts; another user's counts too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Atomic ``np.savez``; the saved file is byte-identical for identical arrays."""
    return atomic_write(path, lambda h: np.savez(h, **arrays))


def load_npz(path: str | os.PathLike, keys: Sequence[str], flag: str) -> dict[str, np.ndarray]:
    """Load an npz without unpickling; ``flag`` names the option the file came from, for errors."""
    path = Path(path)
    if not path.is_file():
        fail(f"{flag} {path}: file not found")
    if not zipfile.is_zipfile(path):  # np.load would take other bytes for a pickle and say so, misleadingly
        fail(f"{flag} {path}: not a readable npz (not a zip archive)")
    _check_npz_headers(path, flag)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                fail(f"{flag} {path}: npz lacks key(s) {missing}; it has {sorted(data.files)}")
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            fail(f"{flag} {path}: npz holds pickled objects, refused for safety (expected plain arrays)")
        fail(f"{flag} {path}: not a readable npz ({exc})")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        fail(f"{flag} {path}: not a readable npz ({exc.__class__.__name__}: {exc})")


def _check_npz_headers(path: Path, flag: str) -> None:
    """Refuse an npz member whose header claims more data than the member holds (a corrupt or forged header,
    e.g. 10^8 images in a file of kilobytes), before numpy tries to allocate it: one line naming the file,
    not an out-of-memory error blamed on some other flag."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                    claimed = math.prod(shape) * dtype.itemsize
                    if dtype.hasobject or claimed <= info.file_size:
                        continue
                    fail(f"{flag} {path}: member {info.filename} claims an array of shape {tuple(shape)} "
                         f"({claimed:,} bytes) but holds only {info.file_size:,}: the file is corrupt or its "
                         f"header is wrong")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # np.load below reports an unreadable file in its own words


def json_safe(obj):
    """``obj`` with every NaN or infinite float (Python or numpy) replaced by None.

    JSON has no NaN: Python writes a bare ``NaN`` token that standard parsers (JavaScript's ``JSON.parse``,
    jq, Go) reject. A number that was not measured (an epoch without a kNN check) or not computable is
    written as ``null``. Finite values are returned as they are, so their text does not change."""
    if isinstance(obj, (float, np.floating)):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj, *, indent: int | None = 2, sort_keys: bool = True) -> str:
    """The project's one JSON encoding: NaN/inf as null (:func:`json_safe`), numpy scalars as numbers;
    ``allow_nan=False`` so a non-finite value that slipped past :func:`json_safe` fails loudly."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, default=float, allow_nan=False)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2, sort_keys: bool = True) -> Path:
    """Write ``obj`` as indented, key-sorted, valid JSON (:func:`dumps_json`) atomically; returns the path."""
    text = dumps_json(obj, indent=indent, sort_keys=sort_keys) + "\n"
    return atomic_write(path, lambda h: h.write(text.encode()))


def write_result(folder: str | os.PathLike, stem: str, text: str, obj) -> Path:
    """A benchmark's result: ``<folder>/<stem>.txt`` (the printed table) and ``<stem>.json`` (its data)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{stem}.txt", lambda h: h.write((text + "\n").encode()))
    return write_json(folder / f"{stem}.json", obj)


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], fieldnames: Sequence[str] | None = None) -> Path:
    """Write all rows at once (atomic); callers keep rows in memory and rewrite after each update."""
    rows = list(rows)
    if fieldnames is None:
        fieldnames = list(rows[0].keys()) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return atomic_write(path, lambda h: h.write(buf.getvalue().encode()))


def _fmt(value):
    if isinstance(value, float):
        return repr(value)
    return value


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def ensure_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create ``path`` if needed and check we may write into it; fails with one line otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        fail(f"{flag} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{flag} {path}: cannot create directory ({exc.strerror or exc})")
    if not path.is_dir():
        fail(f"{flag} {path}: exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"{flag} {path}: directory is not writable")
    try:  # the real test (root ignores permission bits; read-only mounts and immutable dirs do not)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        fail(f"{flag} {path}: directory is not writable ({exc.strerror or exc})")
    return path


DIGEST_BLOCK = 1 << 20  # bytes read at a time: a large dataset is hashed in constant memory


def file_digest(path: str | os.PathLike) -> list:
    """[size in bytes, sha256 hex] of a file's contents, read in blocks (about 1 s per GB, usually from the
    page cache since the run has just read the file). A folder: the digest of its files, by relative name."""
    path = Path(path)
    if path.is_dir():
        h, total = hashlib.sha256(), 0
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            size, digest = file_digest(child)
            total += size
            h.update(f"{child.relative_to(path).as_posix()} {size} {digest}\n".encode(errors="surrogateescape"))
        return [total, h.hexdigest()]
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(DIGEST_BLOCK):
            h.update(block)
            size += len(block)
    return [size, h.hexdigest()]
