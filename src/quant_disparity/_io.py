"""Small I/O helpers shared by loaders, stores and reports: atomic writes and content digests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_path(path: Path):
    """A temporary name next to ``path`` for writers that want a file name (pandas, pyarrow): renamed to
    ``path`` when the block succeeds, removed when it fails, so ``path`` is never seen half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def canonical_json(obj: Any) -> str:
    """Deterministic JSON used for hashing configs (sorted keys, no whitespace)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest_json(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:n]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def prepare_out_dir(path: Path, marker: str, overwrite: bool = False) -> Path:
    """Create ``path`` (parents too) and check it is writable, before any expensive work starts.

    ``marker`` is the main result file; if it already exists and ``overwrite`` is false the call fails,
    so an earlier result is never replaced by accident.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory", "choose a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"--out {path} is not writable ({e.strerror})", "choose a directory you can write to") from None
    if (path / marker).exists() and not overwrite:
        raise UserError(
            f"--out {path} already holds {marker}",
            "choose another --out directory or pass --overwrite to replace it",
        )
    return path


# -- output locks and staged outputs --------------------------------------------------------------------------------
LOCK_NAME = ".quant-disparity.lock"


class OutputLock:
    """An exclusive, non-blocking lock on an output location, held while one command writes it.

    The lock is ``flock`` on a small file holding the owner's pid (for the message a second process gets).
    The file is removed again on release, while still locked; an acquirer that finds its locked file was
    unlinked meanwhile retries on the new one, so removal cannot let two processes in. The kernel drops the
    lock when its process dies, so a killed command never leaves a location locked.
    """

    def __init__(self, lock_file: Path, what: Path):
        self.lock_file = Path(lock_file)
        self.what = Path(what)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        import fcntl

        while True:
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UserError(
                    f"cannot lock {self.what} ({e.strerror})", "choose a location you can write to"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                raise UserError(
                    f"{self.what} is in use by another quant-disparity process" + (f" (pid {owner})" if owner else ""),
                    "wait for it to finish or choose another output",
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed it just after we opened it: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.lock_file.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def lock_dir(path: Path) -> OutputLock:
    """Lock the output directory ``path`` (which must exist) for this process; see :class:`OutputLock`."""
    return OutputLock(Path(path) / LOCK_NAME, Path(path)).acquire()


def lock_file_for(path: Path) -> OutputLock:
    """Lock the output file ``path`` (a hidden lock file next to it); see :class:`OutputLock`."""
    path = Path(path)
    return OutputLock(path.with_name(f".{path.name}.lock"), path).acquire()


class OutputDir:
    """An output directory written as a whole: locked, staged, moved into place only on success.

    ``with OutputDir(path, marker, overwrite) as out:`` checks ``path`` (see :func:`prepare_out_dir`), takes its
    lock for the whole block, and gives :meth:`path` names inside a hidden staging directory. Leaving the block
    normally moves every staged file into ``path`` (the marker last, so a result counts only once it is
    complete); leaving it with an exception removes the staging directory, and ``path`` too if this call
    created it, so a failed command leaves nothing behind and never touches what was there before.
    """

    def __init__(self, path: Path, marker: str, overwrite: bool = False):
        self.target = Path(path)
        self.marker = marker
        self.overwrite = overwrite
        self._created = False
        self._lock: OutputLock | None = None
        self._stage: Path | None = None

    def __enter__(self) -> OutputDir:
        existed = self.target.exists()
        prepare_out_dir(self.target, self.marker, overwrite=True)  # shape and writability; marker checked locked
        self._created = not existed
        try:
            self._lock = lock_dir(self.target)
            if (self.target / self.marker).exists() and not self.overwrite:
                raise UserError(
                    f"--out {self.target} already holds {self.marker}",
                    "choose another --out directory or pass --overwrite to replace it",
                )
            for old in self.target.glob(".staging-*"):  # only the lock holder stages: these are a killed one's
                shutil.rmtree(old, ignore_errors=True)
            self._stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.target))
        except BaseException:
            self._cleanup(failed=True)
            raise
        return self

    def path(self, name: str) -> Path:
        """Where to write the result file ``name`` (inside the staging directory until the block ends)."""
        assert self._stage is not None, "OutputDir used outside its with block"
        return self._stage / name

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path(name), text)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                assert self._stage is not None, "OutputDir used outside its with block"
                names = sorted((p.name for p in self._stage.iterdir()), key=lambda n: n == self.marker)
                for name in names:  # os.replace: each file appears whole; the marker appears last
                    os.replace(self._stage / name, self.target / name)
                _fsync_dir(self.target)
        except BaseException:
            self._cleanup(failed=True)
            raise
        self._cleanup(failed=exc_type is not None)

    def _cleanup(self, failed: bool) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._created and failed:
            try:
                self.target.rmdir()  # only if empty: never anything another process put there
            except OSError:
                pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
