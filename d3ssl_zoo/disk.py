"""A full disk or an unwritable destination reported as such by the writers of runs and files.

Writers fail on a full disk in three ways: ``open``/``write`` raise ``OSError(ENOSPC)``,
safetensors a ``SafetensorError`` whose text holds "os error 28", and ``torch.save`` only a
``RuntimeError`` about an unexpected position in its zip file, so the file system is asked too.

A destination is checked before any work starts (:func:`check_writable`: a file is created in it
and removed); one that becomes unwritable later (permissions changed, a file system remounted
read-only) is reported by the writer as :class:`UnwritableError`, with what is intact.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["DiskFullError", "UnwritableError", "check_destination", "check_writable", "is_disk_full", "is_unwritable",
           "unwritable"]

_FULL_CODES = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded",
               f"os error {errno.ENOSPC}", f"os error {errno.EDQUOT}")
_NEARLY_FULL = 1 << 20  # bytes still free when torch.save gave up
_DENIED_CODES = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)
_PROBE = ".write-test-"
_DENIED_TEXTS = ("Permission denied", "Operation not permitted", "Read-only file system",
                 f"os error {errno.EACCES}", f"os error {errno.EPERM}", f"os error {errno.EROFS}")


class DiskFullError(OSError):
    """No space left while writing ``path``; ``kept`` says what earlier work is intact."""

    def __init__(self, path: str | os.PathLike, kept: str):
        super().__init__(errno.ENOSPC, f"no space left on the device while writing {path}; {kept}. Free space "
                                       f"there (or write to another disk) and run the same command again")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(error: BaseException, folder: str | os.PathLike) -> bool:
    """Whether ``error``, raised while writing into ``folder``, means the disk (or the quota) is full."""
    if isinstance(error, OSError) and error.errno in _FULL_CODES:
        return True
    if any(text in str(error) for text in _FULL_TEXTS):
        return True
    if isinstance(error, RuntimeError):
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL
        except OSError:
            return False
    return False


class UnwritableError(OSError):
    """``path`` cannot be written (``reason``); ``kept`` says what earlier work is intact, ``fix`` what to do."""

    def __init__(self, path: str | os.PathLike, reason: str, kept: str, fix: str):
        super().__init__(errno.EACCES, f"cannot write {path} ({reason}); {kept}. {fix}")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno in (errno.ENOTDIR, errno.EEXIST) and error.filename:
        return f"{error.filename} or a folder above it is a file, not a folder"
    if isinstance(error, OSError) and error.strerror:
        named = error.filename and not os.path.basename(error.filename).startswith(_PROBE)
        return error.strerror.lower() + (f": {error.filename}" if named else "")
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def is_unwritable(error: BaseException) -> bool:
    """Whether ``error``, raised while writing, means the destination refuses writes (permissions, a read-only
    file system, a file where a folder should be)."""
    if isinstance(error, OSError) and error.errno in _DENIED_CODES:
        return True
    return any(text in str(error) for text in _DENIED_TEXTS)


def unwritable(error: BaseException, path: str | os.PathLike, kept: str, fix: str) -> UnwritableError:
    """The :class:`UnwritableError` for ``error``, raised while writing ``path``."""
    return UnwritableError(path, _reason(error), kept, fix)


def check_writable(folder: str | os.PathLike, option: str) -> None:
    """Create ``folder`` if needed and a file in it (removed at once); raise :class:`UnwritableError` naming the
    folder and why if that fails, and what to do (``option``: the command-line option that names the folder).
    A full disk raises :class:`DiskFullError`."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=_PROBE)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if is_disk_full(e, os.path.dirname(os.path.abspath(folder))):
            raise DiskFullError(folder, "nothing was started") from e
        raise UnwritableError(folder, _reason(e), "nothing was started",
                              f"Give {option} a folder you can write to, or make this one writable") from e


def check_destination(folder: str | os.PathLike, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and the reason unless files can be created in ``folder``
    (judged by its nearest existing parent while it does not exist yet): unlike
    :func:`check_writable`, it creates no folder. The check of the command-line tools' outputs.

    Run before any work: the folder is probed with a temporary file, which is removed; nothing
    else is created.
    """
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {what}: {folder} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"cannot write {what}: {folder} is not writable ({e.strerror}); choose another path "
                         f"or make the folder writable") from e
