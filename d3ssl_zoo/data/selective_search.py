"""Selective-search proposals (Sec. 4.1): OpenCV's selective search (its own modes, or SoCo's
configuration as far as OpenCV expresses it, ``mode="soco"``, ``docs/data.md``) and SoCo's
filters on one image (:func:`image_proposals`), and the tool behind ``d3ssl-zoo proposals``
(:func:`make_proposals`), which runs them over a dataset in parallel worker processes, resumable,
with atomic writes, into one proposal file (:mod:`d3ssl_zoo.data.proposal_store`).

Resume: finished images are flushed every ``flush_every`` images / ``flush_seconds`` seconds
(defaults 64 / 10 s; Ctrl-C flushes too) into ``<out>.parts/part-NNNNN.safetensors``, each
written to a temp name, then renamed, so a kill never leaves a half-written file and loses at
most the images finished since the last flush. A rerun reads the final file and the parts,
skips every image already in them (done or recorded as skipped), and at the end merges
everything into ``out`` (atomically) and removes the parts folder. No stored image is computed
again, and no image can appear twice: the todo list excludes every id already stored, and the
writer rejects duplicates.

Workers end with the tool: killed, even by SIGKILL, it leaves no worker computing on.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from d3ssl_zoo.disk import DiskFullError, check_destination

from .coco_json import ImageRecord, coco_records
from .images import folder_records, load_rgb
from .proposal_store import (
    NotWritableError,
    ProposalEntry,
    ProposalStore,
    name_hash,
    write_proposal_file,
)

__all__ = ["FALLBACK_LEVELS", "MODES", "DEFAULT_RESIZE_LONG", "SOCO_SEGMENTATION", "SOCO_WEIGHTS",
           "soco_strategy", "selective_search", "filter_proposals", "image_proposals", "process_image",
           "read_entries", "check_output", "make_proposals", "format_summary", "add_arguments", "run"]

FALLBACK_LEVELS = ("size+ratio+scale", "size+ratio", "size", "whole_image")
MODES = ("fast", "single", "quality", "soco")
#: The long side (pixels) each mode runs at when ``resize_long="auto"``; ``None``: the original size.
DEFAULT_RESIZE_LONG = {"fast": 500, "single": 500, "quality": 500, "soco": None}

#: SoCo's search (its ``selective_search/generate_imagenet_ss_proposals.py``): Felzenszwalb's graph
#: segmentation with scale 300, sigma 0.9, min_size 100 on the full-resolution RGB image. scikit-image
#: divides ``scale`` by 255 and segments the image as floats in [0, 1], which is the same threshold as
#: OpenCV's ``k`` = 300 on the 0-255 values OpenCV's graph segmentation uses; sigma is in pixels in both.
SOCO_SEGMENTATION = {"sigma": 0.9, "k": 300.0, "min_size": 100}
#: Weights of the four similarities in SoCo's similarity, in OpenCV's normalisation (``docs/data.md``):
#: SoCo's texture term adds three per-channel histograms that each sum to 1 (OpenCV's whole histogram
#: sums to 1), hence 3; of its colour term only the V histogram varies (H and S, in [0, 1], all fall
#: in the first of 25 bins over [0, 255]), a one-histogram intersection like OpenCV's.
SOCO_WEIGHTS = {"color": 1.0, "texture": 3.0, "size": 1.0, "fill": 1.0}


def soco_strategy(weights: dict[str, float] | None = None):
    """OpenCV's combined colour + texture + size + fill similarity with ``weights`` (default
    :data:`SOCO_WEIGHTS`), the one strategy of ``mode="soco"``."""
    seg = cv2.ximgproc.segmentation
    make = {"color": seg.createSelectiveSearchSegmentationStrategyColor,
            "texture": seg.createSelectiveSearchSegmentationStrategyTexture,
            "size": seg.createSelectiveSearchSegmentationStrategySize,
            "fill": seg.createSelectiveSearchSegmentationStrategyFill}
    weights = SOCO_WEIGHTS if weights is None else weights
    if set(weights) != set(make) or any(not w >= 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise ValueError(f"weights must give each of {sorted(make)} a weight >= 0 (not all 0), got {weights}")
    multiple = seg.createSelectiveSearchSegmentationStrategyMultiple()
    for name in ("color", "texture", "size", "fill"):
        multiple.addStrategy(make[name](), float(weights[name]))
    return multiple


def _resolve_resize_long(mode: str, resize_long) -> int | None:
    if mode not in MODES:
        raise ValueError(f"selective search mode must be one of {MODES}, got {mode!r}")
    if isinstance(resize_long, str):
        if resize_long != "auto":
            raise ValueError(f"resize_long must be a long side in pixels, None or 'auto', got {resize_long!r}")
        return DEFAULT_RESIZE_LONG[mode]
    return resize_long


def selective_search(image: np.ndarray, mode: str = "fast", resize_long: int | None | str = "auto", *,
                     soco_weights: dict[str, float] | None = None) -> np.ndarray:
    """OpenCV selective search on an RGB uint8 image resized to ``resize_long`` px on its long
    side (``None`` or 0: as is; ``"auto"``: the mode's :data:`DEFAULT_RESIZE_LONG`); returns
    ``(N, 4)`` float32 xyxy boxes in the original image's pixels.

    Modes: ``fast``, ``quality`` and ``single`` are OpenCV's own configurations
    (``switchToSelectiveSearchFast`` / ``Quality`` / ``SingleStrategy``, in HSV and Lab);
    ``soco`` is SoCo's single configuration as far as OpenCV can express it: one graph
    segmentation (:data:`SOCO_SEGMENTATION`) of the RGB image and one combined similarity
    (:func:`soco_strategy`, ``soco_weights``), at full resolution by default.
    """
    resize_long = _resolve_resize_long(mode, resize_long)
    if resize_long is not None and resize_long < 0:
        raise ValueError(f"resize_long must be a long side in pixels (> 0) or 0 / None for the original size, "
                         f"got {resize_long}")
    h, w = image.shape[:2]
    scale = 1.0 if not resize_long else resize_long / max(h, w)
    work = image if scale == 1.0 else cv2.resize(
        image, (max(1, round(w * scale)), max(1, round(h * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    seg = cv2.ximgproc.segmentation
    ss = seg.createSelectiveSearchSegmentation()
    if mode == "soco":  # RGB as SoCo's segmentation and texture see it (the colour histograms ignore the order)
        ss.addImage(np.ascontiguousarray(work))
        ss.addGraphSegmentation(seg.createGraphSegmentation(**SOCO_SEGMENTATION))
        ss.addStrategy(soco_strategy(soco_weights))
    else:
        ss.setBaseImage(cv2.cvtColor(work, cv2.COLOR_RGB2BGR))
        {"fast": ss.switchToSelectiveSearchFast, "quality": ss.switchToSelectiveSearchQuality,
         "single": ss.switchToSingleStrategy}[mode]()
    rects = np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / scale
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return boxes


def filter_proposals(boxes: np.ndarray, width: int, height: int, *, min_size: float = 32,
                     max_ratio: float = 3.0, scale_range=(0.3, 0.8)) -> tuple[np.ndarray, int]:
    """SoCo's filters with fallbacks (``docs/data.md``); returns ``(boxes, level)``.

    Level 0: w, h >= ``min_size``, 1/3 <= w/h <= 3, 0.3 <= sqrt(wh)/sqrt(WH) <= 0.8 (SoCo's
    ``ratio3size0308``). Images left with none fall back to the ratio filter (1: size + aspect,
    SoCo's ``filter_ratio``), then size only (2: SoCo's ``filter_none``), as SoCo's
    ``filter_ss_proposals_json_post_no_prop.py`` does, then the whole-image box (3). Sizes are in
    original image pixels. Duplicate boxes are removed (SoCo's json keeps them).
    """
    b = np.unique(np.round(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)), axis=0)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    valid = (bw > 0) & (bh > 0)
    size_ok = valid & (bw >= min_size) & (bh >= min_size)
    ratio_ok = valid & (bw <= max_ratio * bh) & (bh <= max_ratio * bw)
    rel = np.sqrt(bw.clip(0) * bh.clip(0)) / np.sqrt(width * height)
    scale_ok = (rel >= scale_range[0]) & (rel <= scale_range[1])
    for level, keep in enumerate((size_ok & ratio_ok & scale_ok, size_ok & ratio_ok, size_ok)):
        if keep.any():
            return b[keep], level
    return np.array([[0, 0, width, height]], dtype=np.float32), 3


def image_proposals(image: np.ndarray, mode: str = "fast",
                    resize_long: int | None | str = "auto") -> tuple[np.ndarray, int]:
    """Selective search + filters for one image: ``(boxes, fallback_level)``."""
    h, w = image.shape[:2]
    return filter_proposals(selective_search(image, mode, resize_long), w, h)


def process_image(record: ImageRecord, mode: str, resize_long: int | None, min_side: int):
    """One image -> ``("ok", ProposalEntry)`` or ``("skip", {"image_id", "file_name", "reason"})``."""
    try:
        image = load_rgb(record.path)
    except ValueError as e:
        return "skip", {"image_id": record.image_id, "file_name": record.file_name, "reason": "unreadable",
                        "detail": str(e)}
    h, w = image.shape[:2]
    if min(h, w) < min_side:
        return "skip", {"image_id": record.image_id, "file_name": record.file_name, "reason": "too_small",
                        "detail": f"{w}x{h} < {min_side} px"}
    boxes, level = image_proposals(image, mode, resize_long)
    return "ok", ProposalEntry(record.image_id, record.file_name, w, h, level, boxes)


def _exit_with_parent(parent_pid: int) -> None:
    """End this worker process when ``parent_pid`` dies, even by SIGKILL (no orphans computing on).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Elsewhere, a
    daemon thread polls the parent pid (OpenCV releases the GIL, so it runs during a search).
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_init(parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    cv2.setNumThreads(1)  # parallelism is across images; threads inside OpenCV would oversubscribe


def _worker(args):
    return process_image(*args)


def read_entries(path: str | os.PathLike) -> tuple[ProposalStore, list[ProposalEntry], list[dict]]:
    """All entries of a proposal file (file names are stored hashed: ``file_name`` is empty and
    ``stored_name_hash`` carries the hash)."""
    store = ProposalStore(path)
    entries = [ProposalEntry(int(i), "", int(store.sizes[r][0]), int(store.sizes[r][1]), int(store.fallback[r]),
                             store[int(i)], int(store.name_hashes[r])) for r, i in enumerate(store.image_ids)]
    return store, entries, list(store.skipped)


def check_output(out: str | os.PathLike) -> None:
    """Refuse, before any search, an ``out`` the tool could not write: a directory, or a folder
    (of ``out`` or of its resumable parts ``<out>.parts``) that is not writable."""
    out = Path(out)
    parts_dir = out.with_name(out.name + ".parts")
    if out.is_dir():
        raise ValueError(f"proposal file {out} is a directory; name the file to write, e.g. "
                         f"{out / 'proposals.safetensors'}")
    if parts_dir.exists() and not parts_dir.is_dir():
        raise ValueError(f"{parts_dir} is a file, but the tool keeps the resumable parts of {out} in a folder of "
                         f"that name; move the file away or choose another --out")
    check_destination(out.parent, f"proposal file {out}")
    if parts_dir.is_dir():
        check_destination(parts_dir, f"the resumable parts of {out} in {parts_dir}")


def make_proposals(records: Sequence[ImageRecord], out: str | os.PathLike, *, mode: str = "fast",
                   resize_long: int | None | str = "auto", workers: int = 1, min_side: int = 32,
                   flush_every: int = 64, flush_seconds: float = 10.0, progress: bool = True) -> dict:
    """Selective search + SoCo filters for every record; writes one proposal file at ``out``.

    ``workers <= 1`` runs in this process. Returns a summary dict (see :func:`format_summary`).
    ``out`` is checked before any search (:func:`check_output`); a folder that stops being
    writable later raises :class:`~d3ssl_zoo.data.proposal_store.NotWritableError`, which says
    which images are kept for the rerun.
    """
    out = Path(out)
    parts_dir = out.with_name(out.name + ".parts")
    resize_long = _resolve_resize_long(mode, resize_long)
    if resize_long is not None and resize_long < 0:
        raise ValueError(f"resize_long must be a long side in pixels (> 0) or None for the original size, "
                         f"got {resize_long}")
    if min_side < 0:
        raise ValueError(f"min_side must be >= 0 pixels, got {min_side}")
    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1 image, got {flush_every}")
    check_output(out)
    if not records:
        raise ValueError(f"no images to make proposals for (output {out}); check --images / --coco")
    by_id = {r.image_id: r for r in records}
    if len(by_id) != len(records):
        dups = sorted(i for i, n in Counter(r.image_id for r in records).items() if n > 1)
        raise ValueError(f"the dataset lists image id(s) {dups[:10]} more than once; image ids must be unique")
    sources = ([out] if out.is_file() else []) + (sorted(parts_dir.glob("part-*.safetensors"))
                                                   if parts_dir.is_dir() else [])
    stored: list[ProposalEntry] = []
    skipped: list[dict] = []
    done: set[int] = set()
    for src in sources:
        store, entries, sk = read_entries(src)
        if store.metadata.get("mode") != mode or store.metadata.get("resize_long") != str(resize_long):
            raise ValueError(f"{src} was made with mode={store.metadata.get('mode')} resize_long="
                             f"{store.metadata.get('resize_long')}; rerun with the same settings or a new --out")
        for r, e in enumerate(entries):
            rec = by_id.get(e.image_id)
            if rec is not None and store.name_hashes[r] != name_hash(rec.file_name):
                raise ValueError(f"{src} belongs to another dataset: image id {e.image_id} is "
                                 f"{rec.file_name!r} here but not in that file; use a new --out")
        # parts left next to a complete file (their folder could not be removed) repeat its images
        stored += [e for e in entries if e.image_id not in done]
        skipped += [s for s in sk if int(s["image_id"]) not in done]
        done |= {e.image_id for e in entries} | {int(s["image_id"]) for s in sk}
    todo = [r for r in records if r.image_id not in done]
    if parts_dir.is_dir():
        for stale in parts_dir.glob(".*.tmp-*"):  # temp files of a killed run
            stale.unlink()

    new_entries: list[ProposalEntry] = []
    new_skipped: list[dict] = []
    buffer: list[ProposalEntry] = []
    buffer_skipped: list[dict] = []
    part_index = 1 + max((int(p.stem.split("-")[1]) for p in sources if p.parent == parts_dir), default=-1)
    last_flush = time.monotonic()

    def kept() -> str:
        """What a failed write leaves for the rerun (the images already in ``out`` and the parts)."""
        safe = len(records) - len(todo) + len(new_entries) + len(new_skipped) - len(buffer) - len(buffer_skipped)
        where = " and ".join(str(p) for p in ((out,) if out in sources else ()) + (parts_dir,))
        lost = len(buffer) + len(buffer_skipped)
        return (f"{safe} of {len(records)} images are safe in {where}, and a rerun of the same command keeps them"
                + (f"; the {lost} finished since the last save are computed again" if lost else ""))

    def flush():
        nonlocal part_index, last_flush, buffer, buffer_skipped
        if buffer or buffer_skipped:
            write_proposal_file(parts_dir / f"part-{part_index:05d}.safetensors", buffer, mode=mode,
                                resize_long=resize_long, skipped=buffer_skipped, kept=kept())
            part_index += 1
        buffer, buffer_skipped = [], []
        last_flush = time.monotonic()

    from tqdm.auto import tqdm

    start = time.perf_counter()
    jobs = ((r, mode, resize_long, min_side) for r in todo)
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="proposals", unit="img",
               disable=not progress)
    # spawn, not fork: a parent that already ran OpenCV (or torch) threads can deadlock a forked child
    pool = mp.get_context("spawn").Pool(workers, _worker_init, (os.getpid(),)) if workers > 1 and todo else None
    if pool is None:
        _worker_init()
    try:
        results = pool.imap_unordered(_worker, jobs, chunksize=4) if pool else map(_worker, jobs)
        for kind, item in results:
            (buffer if kind == "ok" else buffer_skipped).append(item)
            (new_entries if kind == "ok" else new_skipped).append(item)
            bar.update(1)
            if len(buffer) + len(buffer_skipped) >= flush_every or time.monotonic() - last_flush > flush_seconds:
                flush()
        flush()
    except KeyboardInterrupt:
        flush()  # keep what is finished; the rerun resumes from there
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
    seconds = time.perf_counter() - start

    all_entries = stored + new_entries
    all_skipped = skipped + new_skipped
    if sources != [out] or new_entries or new_skipped:
        write_proposal_file(out, all_entries, mode=mode, resize_long=resize_long, skipped=all_skipped,
                            kept=f"all {len(records)} images are safe in {parts_dir}, and a rerun of the same "
                                 f"command merges them into {out} without searching any again")
    if parts_dir.is_dir():
        try:
            shutil.rmtree(parts_dir)
        except OSError as e:
            raise NotWritableError(parts_dir, e.strerror or str(e),
                                   f"{out} is complete ({len(records)} images); delete {parts_dir}, which "
                                   f"only repeats it") from e
    counts = np.array([len(e.boxes) for e in all_entries]) if all_entries else np.zeros(0, int)
    levels = Counter(FALLBACK_LEVELS[e.fallback] for e in all_entries)
    return {
        "out": str(out), "images": len(records), "with_proposals": len(all_entries),
        "computed_now": len(new_entries) + len(new_skipped), "resumed": len(records) - len(todo),
        "skipped": dict(Counter(s["reason"] for s in all_skipped)),
        "proposals_per_image": {"mean": float(counts.mean()) if counts.size else 0.0,
                                "min": int(counts.min()) if counts.size else 0,
                                "max": int(counts.max()) if counts.size else 0},
        "fallbacks": {lvl: levels.get(lvl, 0) for lvl in FALLBACK_LEVELS},
        "seconds": seconds, "images_per_s": (len(todo) / seconds) if seconds > 0 and todo else 0.0,
        "workers": workers, "mode": mode,
    }


def format_summary(s: dict) -> str:
    pp = s["proposals_per_image"]
    lines = [
        f"proposal file      {s['out']}",
        f"images             {s['images']} ({s['with_proposals']} with proposals, {s['resumed']} already done, "
        f"{s['computed_now']} computed now)",
        f"skipped            {s['skipped'] or 'none'}",
        f"proposals / image  mean {pp['mean']:.1f}, min {pp['min']}, max {pp['max']}",
        "fallbacks used     " + ", ".join(f"{k}: {v}" for k, v in s["fallbacks"].items()),
        f"speed              {s['images_per_s']:.2f} images/s with {s['workers']} worker(s), mode {s['mode']}, "
        f"{s['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def _at_least(minimum: int, note: str = ""):
    """argparse type: an integer >= ``minimum`` (argparse names the option in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}; give a whole number >= {minimum}{note}")
        return value
    return parse


def add_arguments(p) -> None:
    """Command-line options of ``d3ssl-zoo proposals``."""
    p.add_argument("--images", help="image folder (with --coco: the folder the json's file_names refer to)")
    p.add_argument("--coco", help="COCO annotation json; its image ids key the proposal file")
    p.add_argument("--out", required=True, help="output proposal file (.safetensors)")
    p.add_argument("--mode", choices=MODES, default="fast",
                   help="selective search mode: OpenCV's fast, single or quality, or soco (SoCo's single "
                        "configuration; docs/data.md)")
    p.add_argument("--resize-long", type=_at_least(0, " (0: the original size)"), default=None,
                   help="long side in pixels the search runs at (0: original size; default: 500 for fast, "
                        "single and quality, the original size for soco)")
    p.add_argument("--workers", type=_at_least(1), default=os.cpu_count() or 1,
                   help="worker processes (1: in process)")
    p.add_argument("--min-side", type=_at_least(0), default=32,
                   help="images with a shorter side (pixels) are skipped and reported")
    p.add_argument("--flush-every", type=_at_least(1), default=64, help="images per resumable part file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if not args.images and not args.coco:
        raise SystemExit("give --images DIR, or --coco ANN.json (with --images DIR if the images are not next to it)")
    try:
        check_output(args.out)  # before reading a COCO-scale json
        records = coco_records(args.coco, args.images) if args.coco else folder_records(args.images)
        resize_long = "auto" if args.resize_long is None else (args.resize_long or None)
        summary = make_proposals(records, args.out, mode=args.mode, resize_long=resize_long,
                                 workers=args.workers, min_side=args.min_side, flush_every=args.flush_every,
                                 progress=not args.no_progress)
    except (ValueError, FileNotFoundError, DiskFullError, NotWritableError) as e:
        print(f"d3ssl-zoo proposals: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0
