"""The cache folder and atomic first-use builds of the built-in datasets (the embedded sample,
the generated scenes)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

__all__ = ["cache_base", "build_atomically"]


def cache_base() -> Path:
    """``$D3SSL_ZOO_CACHE`` (default ``~/.cache/d3ssl_zoo``), checked to be usable as a folder."""
    env = os.environ.get("D3SSL_ZOO_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "d3ssl_zoo"
    existing = base
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        setting = f"D3SSL_ZOO_CACHE={env}" if env else f"the default cache {base}"
        raise ValueError(f"{setting} cannot be a cache folder: {existing} is a file; point D3SSL_ZOO_CACHE "
                         f"at a folder (it is created if missing) or remove that file")
    return base


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
