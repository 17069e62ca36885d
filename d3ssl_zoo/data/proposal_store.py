"""The proposal file: selective-search proposals (Sec. 4.1) of a dataset, written once by
:mod:`d3ssl_zoo.data.selective_search` and read lazily by :class:`ProposalStore` during pre-training.

Proposal file format (``d3ssl_zoo.proposals/1``): one safetensors file holding

* ``image_ids`` int64 ``(N,)`` sorted ascending; ``name_hash`` int64 ``(N,)`` (blake2b-64 of the
  image's file name relative to the images folder: detects a file made for another dataset);
* ``sizes`` int32 ``(N, 2)`` = (width, height) of the image the boxes refer to;
* ``offsets`` int64 ``(N + 1,)``: image ``r``'s boxes are rows ``offsets[r]:offsets[r+1]``;
* ``fallback`` uint8 ``(N,)``: filter level that produced them (see
  :data:`d3ssl_zoo.data.selective_search.FALLBACK_LEVELS`);
* ``boxes`` int16 (int32 if an image is wider than 32767 px) ``(M, 4)``: xyxy original pixels,
  rounded (selective search is pixel-accurate at best).

Header metadata (strings): ``format``, ``mode``, ``resize_long``, ``filters`` (json) and
``skipped`` (json list of ``{"image_id", "file_name", "reason"}`` for images that could not be
used, so datasets report them as counted skips). Only the index (``O(N)`` integers) is read
eagerly; box rows are read lazily through the memory map, so COCO's 118k images cost a few MB.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from d3ssl_zoo.disk import DiskFullError, is_disk_full

__all__ = ["FORMAT", "NotWritableError", "ProposalEntry", "name_hash", "write_proposal_file",
           "ProposalStore"]

FORMAT = "d3ssl_zoo.proposals/1"

_SAFETENSORS_IO = re.compile(r"I/O error: (.+?) \(os error \d+\)")


class NotWritableError(OSError):
    """``path`` could not be written (permissions, a read-only disk; a full disk is
    :class:`~d3ssl_zoo.disk.DiskFullError`); ``kept`` says what earlier work is intact."""

    def __init__(self, path: str | os.PathLike, reason: str, kept: str):
        path = Path(path)
        super().__init__(errno.EACCES, f"cannot write {path} ({reason}); {kept}. Make {path.parent} writable "
                                       f"again and run the same command")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror



def name_hash(file_name: str) -> int:
    """Signed 64-bit blake2b hash of a file name (stable across processes and machines)."""
    return int.from_bytes(hashlib.blake2b(file_name.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


@dataclass
class ProposalEntry:
    image_id: int
    file_name: str
    width: int
    height: int
    fallback: int
    boxes: np.ndarray
    stored_name_hash: int | None = None  # set when read back from a file (names are stored hashed)

    def name_hash(self) -> int:
        return self.stored_name_hash if self.stored_name_hash is not None else name_hash(self.file_name)


def write_proposal_file(path: str | os.PathLike, entries: Sequence[ProposalEntry], *, mode: str,
                        resize_long: int | None, skipped: Sequence[dict] = (),
                        kept: str = "the proposal files written before are intact, and a rerun of the same "
                                    "command keeps the images they hold") -> None:
    """Write entries (any order, unique ids) as one proposal file, atomically (temp + rename).

    A full disk raises :class:`~d3ssl_zoo.disk.DiskFullError`, a folder that cannot be written
    :class:`NotWritableError`; both say ``kept``, what earlier work is intact. Files written
    before stay intact.
    """
    path = Path(path)
    entries = sorted(entries, key=lambda e: e.image_id)
    ids = np.array([e.image_id for e in entries], dtype=np.int64)
    if ids.size and (np.diff(ids) == 0).any():
        dup = int(ids[np.flatnonzero(np.diff(ids) == 0)[0]])
        raise ValueError(f"proposal entries hold image id {dup} twice")
    counts = np.array([len(e.boxes) for e in entries], dtype=np.int64)
    boxes = (np.concatenate([np.round(e.boxes).reshape(-1, 4) for e in entries]) if entries
             else np.zeros((0, 4), np.float32))
    dtype = np.int16 if boxes.size == 0 or np.abs(boxes).max() < 32767 else np.int32
    tensors = {
        "image_ids": ids,
        "name_hash": np.array([e.name_hash() for e in entries], dtype=np.int64),
        "sizes": np.array([[e.width, e.height] for e in entries], dtype=np.int32).reshape(-1, 2),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "fallback": np.array([e.fallback for e in entries], dtype=np.uint8),
        "boxes": np.ascontiguousarray(boxes.astype(dtype)),
    }
    meta = {"format": FORMAT, "mode": mode, "resize_long": str(resize_long),
            "filters": json.dumps({"min_size": 32, "max_ratio": 3.0, "scale_range": [0.3, 0.8]}),
            "skipped": json.dumps(list(skipped))}
    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)  # a shared dataset file, not a secret

    write_atomically(path, write, kept)


def write_atomically(path: Path, write: Callable[[Path], None], kept: str) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it into place, so ``path`` is
    either the old file or the whole new one. A failure removes the temporary file and raises
    :class:`~d3ssl_zoo.disk.DiskFullError` or :class:`NotWritableError` with ``kept`` (what is intact)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself refuses: nothing of ours is left in it
        if is_disk_full(e, path.parent):
            raise DiskFullError(path, kept) from e
        if isinstance(e, OSError):
            raise NotWritableError(path, e.strerror or str(e), kept) from e
        io = _SAFETENSORS_IO.search(str(e))  # safetensors' text for an OSError of its own
        if io:
            raise NotWritableError(path, io.group(1), kept) from e
        raise


class ProposalStore:
    """Lazy reader of a proposal file. ``store[image_id]`` -> ``(n, 4)`` float32 xyxy pixels.

    Safe to pickle into DataLoader workers: each process opens its own memory map on first use.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"proposal file {self.path} does not exist; make it with "
                f"`d3ssl-zoo proposals --images DIR --out {self.path}`")
        try:
            with safe_open(str(self.path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"{self.path} is not a d3ssl_zoo proposal file (format "
                                     f"{meta.get('format')!r}, expected {FORMAT!r})")
                self.image_ids = f.get_tensor("image_ids")
                self.name_hashes = f.get_tensor("name_hash")
                self.sizes = f.get_tensor("sizes")
                self.offsets = f.get_tensor("offsets")
                self.fallback = f.get_tensor("fallback")
        except (OSError, SafetensorError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read proposal file {self.path}: {e}") from e
        self.metadata = meta
        self.skipped = json.loads(meta.get("skipped", "[]"))
        self._handle = None
        self._pid = None

    def __len__(self) -> int:
        return int(self.image_ids.size)

    def _row(self, image_id: int) -> int:
        r = int(np.searchsorted(self.image_ids, image_id))
        if r >= self.image_ids.size or self.image_ids[r] != image_id:
            raise KeyError(f"proposal file {self.path} has no entry for image id {image_id}; rerun "
                           f"d3ssl-zoo proposals on this dataset (it resumes and adds missing images)")
        return r

    def __contains__(self, image_id: int) -> bool:
        r = int(np.searchsorted(self.image_ids, image_id))
        return r < self.image_ids.size and self.image_ids[r] == image_id

    def image_size(self, image_id: int) -> tuple[int, int]:
        w, h = self.sizes[self._row(image_id)]
        return int(w), int(h)

    def __getitem__(self, image_id: int) -> np.ndarray:
        r = self._row(image_id)
        if self._handle is None or self._pid != os.getpid():
            self._handle = safe_open(str(self.path), framework="numpy")
            self._pid = os.getpid()
        rows = self._handle.get_slice("boxes")[int(self.offsets[r]):int(self.offsets[r + 1])]
        return np.asarray(rows, dtype=np.float32).reshape(-1, 4)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_pid"] = None
        return state

    def check_images(self, images: Iterable[tuple[int, str]]) -> tuple[list[int], list[dict]]:
        """Match dataset images ``(image_id, file_name)`` against the file.

        Returns ``(usable_ids, skipped)`` where ``skipped`` are the file's recorded skips.
        Raises ``ValueError`` if the file belongs to another dataset (name mismatch) or lacks
        images it did not record as skipped.
        """
        skipped_ids = {int(s["image_id"]): s for s in self.skipped}
        usable, skipped, missing = [], [], []
        for image_id, file_name in images:
            if image_id in self:
                if self.name_hashes[self._row(image_id)] != name_hash(file_name):
                    raise ValueError(
                        f"proposal file {self.path} belongs to another dataset: image id {image_id} "
                        f"is {file_name!r} here but the file was made for a different image; make "
                        f"proposals for this dataset with d3ssl-zoo proposals")
                usable.append(image_id)
            elif image_id in skipped_ids:
                skipped.append(skipped_ids[image_id])
            else:
                missing.append(image_id)
        if missing:
            raise ValueError(
                f"proposal file {self.path} lacks {len(missing)} image(s) of this dataset (first ids "
                f"{missing[:5]}); run d3ssl-zoo proposals with the same dataset and --out "
                f"{self.path} to add them (it resumes)")
        return usable, skipped
