"""Atomic file and directory writes: a save either happens whole or not at all.

Every file prunec writes (artifacts, their sidecars, plans, reports, CLI outputs) goes
through :func:`atomic_path` or its small wrappers:

1. a temporary file is created *beside* the target, in the same directory (so the final
   rename never crosses a file system), with a unique name (``O_EXCL``) and the mode the
   process's umask gives a new file;
2. the caller (or ``writer``) fills it;
3. the data is flushed to disk (``fsync``), the temporary file is renamed over the target
   with ``os.replace`` (atomic on POSIX and Windows), and the directory entry is flushed.

Readers therefore see the previous file or the new one, never a mix; two processes saving
to one path leave one of their files, complete. A failure at any step (a full disk, a
read-only directory, an exception in the writer) removes the temporary file, leaves the
previous file byte for byte as it was, and raises an ``OSError`` naming the target (a
writer's own :class:`~prunec.errors.PrunecError` passes through; any other exception
becomes a ``PrunecError`` naming the target, the original chained).

:func:`atomic_directory` does the same for a directory built whole (a saved model folder):
it is built beside the target and swapped in with one rename.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator

from prunec.errors import PrunecError

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text",
           "atomic_directory", "fsync_directory"]

_TMP_MARK = ".prunec-tmp-"


def _temp_name(path: Path) -> Path:
    # The target's suffix is kept: some writers pick the format from it (onnx.save,
    # matplotlib's savefig).
    return path.with_name(f".{path.name}{_TMP_MARK}{secrets.token_hex(6)}{path.suffix}")


def _oserror(exc: OSError, path: Path, doing: str) -> OSError:
    """An ``OSError`` of the same kind whose message and filename name the target."""
    reason = exc.strerror or str(exc)
    # str() of the result reads "[Errno 13] cannot save: Permission denied: '<path>'"
    return OSError(exc.errno or errno.EIO, f"cannot {doing}: {reason}", str(path))


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry (the rename) to disk; a no-op where directories cannot be
    opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the data is synced
        pass
    finally:
        os.close(fd)


def _create_temp(path: Path) -> Path:
    for _ in range(100):
        temp = _temp_name(path)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _oserror(exc, path, "save") from exc
        os.close(fd)
        return temp
    raise FileExistsError(errno.EEXIST, f"cannot save to {str(path)!r}: no free temporary "
                          f"name beside it", str(path))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    The temporary file exists (empty) when yielded; write it by name (``torch.export.save``,
    ``onnx.save``) or open it. On an exception the temporary file is removed and ``path``
    is untouched.

    Raises:
        OSError: the directory is missing or not writable, or writing, syncing or renaming
            failed; the message and ``filename`` name ``path``.
        PrunecError: the body raised something other than an ``OSError`` (chained), or
            ``path`` is an existing directory.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"cannot save to {str(path)!r}: it is a "
                                f"directory", str(path))
    temp = _create_temp(path)
    try:
        yield temp
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        _raise_save_error(exc, path, "file")
    fsync_directory(path.parent)


def _raise_save_error(exc: BaseException, path: Path, kind: str) -> None:
    """Re-raise a failed save as one clear error (the temporary copy is already gone)."""
    if isinstance(exc, OSError):
        raise _oserror(exc, path, "save") from exc
    if isinstance(exc, (PrunecError, KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc
    raise PrunecError(f"saving {str(path)!r} failed ({type(exc).__name__}: "
                      f"{_first_line(exc)}); the previous {kind}, if any, is unchanged."
                      ) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            handle.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(temp_path)`` and move the result over ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as temp:
        writer(temp)
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty directory beside ``path``; on a clean exit it becomes ``path``.

    A missing target is created by one ``rename``. An existing one is swapped out with one
    rename of it aside and one of the new directory in (the window between them is two
    system calls; the old directory is removed only after the new one is in place, and
    is put back if the second rename fails). Every file in the new directory is synced
    before the swap. On an exception the new directory is removed and ``path`` is
    untouched.

    Raises:
        OSError: naming ``path``, as :func:`atomic_path`; also when ``path`` is a file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot save to {str(path)!r}: it is a "
                                 f"file, not a directory", str(path))
    temp = path.with_name(f".{path.name}{_TMP_MARK}{secrets.token_hex(6)}")
    try:
        os.mkdir(temp)
    except OSError as exc:
        raise _oserror(exc, path, "save") from exc
    try:
        yield temp
        for root, _, files in os.walk(temp):
            for name in files:
                _fsync_file(Path(root) / name)
            fsync_directory(Path(root))
        _swap_in(temp, path)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        _raise_save_error(exc, path, "directory")
    fsync_directory(path.parent)


def _swap_in(new: Path, path: Path) -> None:
    try:
        os.rename(new, path)  # atomic when path does not exist (or is an empty directory)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    aside = path.with_name(f".{path.name}{_TMP_MARK}old-{secrets.token_hex(6)}")
    os.rename(path, aside)
    try:
        os.rename(new, path)
    except OSError:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)
