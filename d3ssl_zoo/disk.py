"""A full disk reported as such by the writers of checkpoints and proposal files.

Writers fail on a full disk in three ways: ``open``/``write`` raise ``OSError(ENOSPC)``,
safetensors a ``SafetensorError`` whose text holds "os error 28", and ``torch.save`` only a
``RuntimeError`` about an unexpected position in its zip file, so the file system is asked too.
"""
from __future__ import annotations

import errno
import os
import shutil

__all__ = ["DiskFullError", "is_disk_full"]

_FULL_CODES = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded",
               f"os error {errno.ENOSPC}", f"os error {errno.EDQUOT}")
_NEARLY_FULL = 1 << 20  # bytes still free when torch.save gave up


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
