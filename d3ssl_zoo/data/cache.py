"""Atomic first-use builds of the built-in datasets (the embedded sample, the generated scenes)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

__all__ = ["build_atomically"]


def build_atomically(root: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` in a temp folder next to ``root`` and rename it into place when complete.

    A crash never leaves a half-made ``root``; when another process finishes first (its
    ``root/complete.json`` exists), this one's copy is dropped. An empty ``root`` is replaced.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        if root.exists():
            root.rmdir()  # an empty folder left by the user
        os.rename(tmp, root)
    except OSError:
        if not (root / "complete.json").is_file():  # not another process finishing first: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
