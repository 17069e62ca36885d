"""Selective search, SoCo's filters, the proposal file and the resumable proposal tool."""
import argparse
import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import d3ssl_zoo.data.proposal_store as proposal_store
import d3ssl_zoo.data.selective_search as tool
from d3ssl_zoo.data.images import folder_records
from d3ssl_zoo.data.proposal_store import ProposalEntry, ProposalStore, write_proposal_file
from d3ssl_zoo.data.selective_search import filter_proposals, selective_search
from d3ssl_zoo.disk import DiskFullError


def make_folder(root: Path, n=4, size=(64, 48)):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = np.zeros((size[1], size[0], 3), np.uint8)
        a[:] = rng.integers(0, 255, 3)
        a[8:30, 10:40] = rng.integers(0, 255, 3)
        a[20:44, 30:60] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(root / f"img{i}.png")
    return root


def test_filter_levels_and_fallbacks():
    W = H = 200
    good = np.array([[0, 0, 100, 100]], np.float32)  # sqrt(wh)/sqrt(WH) = 0.5
    b, lvl = filter_proposals(np.concatenate([good, [[0, 0, 20, 20]]]), W, H)
    assert lvl == 0 and np.allclose(b, good)
    b, lvl = filter_proposals(np.array([[0, 0, 190, 190]], np.float32), W, H)  # too large -> ratio filter
    assert lvl == 1
    b, lvl = filter_proposals(np.array([[0, 0, 190, 190], [0, 0, 20, 20]], np.float32), W, H)
    assert lvl == 1 and len(b) == 1  # the ratio fallback keeps the size rule
    b, lvl = filter_proposals(np.array([[0, 0, 190, 40]], np.float32), W, H)  # elongated, big enough
    assert lvl == 2
    b, lvl = filter_proposals(np.array([[0, 0, 20, 1]], np.float32), W, H)  # fails every filter
    assert lvl == 3 and np.allclose(b, [[0, 0, W, H]])
    b, lvl = filter_proposals(np.zeros((0, 4), np.float32), W, H)
    assert lvl == 3
    b, _ = filter_proposals(np.array([[0, 0, 100, 100], [0, 0, 100, 100]], np.float32), W, H)
    assert len(b) == 1  # duplicates removed


def test_selective_search_boxes_in_original_pixels():
    img = np.zeros((60, 90, 3), np.uint8)
    img[10:40, 20:70] = 200
    for resize in (None, 120):
        b = selective_search(img, "fast", resize)
        assert b.ndim == 2 and b.shape[1] == 4 and len(b) > 0
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 90 + 1e-3).all() and (b[:, 3] <= 60 + 1e-3).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    with pytest.raises(ValueError, match="mode"):
        selective_search(img, "slow")


def test_file_roundtrip_lazy_and_errors(tmp_path):
    entries = [ProposalEntry(7, "b.jpg", 50, 40, 0, np.array([[1, 2, 30, 20], [0, 0, 50, 40]], np.float32)),
               ProposalEntry(3, "a.jpg", 64, 64, 3, np.array([[0, 0, 64, 64]], np.float32))]
    path = tmp_path / "p.safetensors"
    write_proposal_file(path, entries, mode="fast", resize_long=500,
                        skipped=[{"image_id": 9, "file_name": "c.jpg", "reason": "too_small"}])
    store = ProposalStore(path)
    assert store.image_ids.tolist() == [3, 7] and len(store) == 2
    assert np.allclose(store[7], entries[0].boxes) and store[7].dtype == np.float32
    assert store.image_size(7) == (50, 40) and 7 in store and 8 not in store
    with pytest.raises(KeyError, match="no entry for image id 8"):
        store[8]
    usable, skipped = store.check_images([(3, "a.jpg"), (7, "b.jpg"), (9, "c.jpg")])
    assert usable == [3, 7] and skipped[0]["reason"] == "too_small"
    with pytest.raises(ValueError, match="belongs to another dataset"):
        store.check_images([(3, "zzz.jpg")])
    with pytest.raises(ValueError, match="lacks 1 image"):
        store.check_images([(3, "a.jpg"), (11, "d.jpg")])
    with pytest.raises(ValueError, match="twice"):
        write_proposal_file(path, entries + entries[:1], mode="fast", resize_long=500)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="cannot read proposal file"):
        ProposalStore(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="d3ssl-zoo proposals --images DIR --out"):
        ProposalStore(tmp_path / "missing.safetensors")


def test_tool_skips_bad_images_and_resumes_without_redoing(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", n=4)
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(root / "small.png")
    (root / "zbroken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    records = folder_records(root)
    out = tmp_path / "p.safetensors"
    first = tool.make_proposals(records[:2], out, resize_long=None, progress=False)
    assert first["with_proposals"] == 2
    # simulate a killed run: its finished part is in the parts folder, plus a stale temp file
    parts = tmp_path / "p.safetensors.parts"
    parts.mkdir()
    os.replace(out, parts / "part-00000.safetensors")
    (parts / ".part-00001.safetensors.tmp-123").write_bytes(b"half")
    calls = []
    real = tool.process_image
    monkeypatch.setattr(tool, "process_image", lambda r, *a: calls.append(r.image_id) or real(r, *a))
    s = tool.make_proposals(records, out, resize_long=None, progress=False, flush_every=1)
    assert sorted(calls) == [r.image_id for r in records[2:]]  # nothing done twice
    assert s["resumed"] == 2 and s["skipped"] == {"too_small": 1, "unreadable": 1}
    assert not parts.exists()
    store = ProposalStore(out)
    assert store.image_ids.tolist() == [0, 1, 2, 3] and len(store.skipped) == 2
    calls.clear()
    mtime = out.stat().st_mtime_ns
    again = tool.make_proposals(records, out, resize_long=None, progress=False)
    assert calls == [] and again["computed_now"] == 0 and out.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="mode=fast"):
        tool.make_proposals(records, out, mode="single", resize_long=None, progress=False)
    assert "fallbacks used" in tool.format_summary(s)


@pytest.mark.slow
def test_two_workers_give_the_same_file(tmp_path):
    root = make_folder(tmp_path / "imgs", n=4)
    records = folder_records(root)
    one = tool.make_proposals(records, tmp_path / "a.safetensors", resize_long=None, workers=1, progress=False)
    two = tool.make_proposals(records, tmp_path / "b.safetensors", resize_long=None, workers=2, progress=False)
    a, b = ProposalStore(tmp_path / "a.safetensors"), ProposalStore(tmp_path / "b.safetensors")
    assert one["with_proposals"] == two["with_proposals"] == 4
    for i in a.image_ids:
        assert np.array_equal(a[int(i)], b[int(i)])


def test_a_full_disk_names_the_file_and_keeps_what_was_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "p.safetensors"
    write_proposal_file(out, [ProposalEntry(0, "a.png", 64, 48, 0, np.array([[1, 2, 30, 40]], np.float32))],
                        mode="fast", resize_long=None)

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(proposal_store, "save_file", full_disk)
    with pytest.raises(DiskFullError, match=f"writing {out}; the proposal files written before are intact"):
        write_proposal_file(out, [], mode="fast", resize_long=None)
    assert ProposalStore(out).image_ids.tolist() == [0] and sorted(os.listdir(tmp_path)) == ["p.safetensors"]
    # through the command line: a clear message and exit code 2, no traceback
    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    root = make_folder(tmp_path / "imgs", n=2)
    rc = tool.run(p.parse_args(["--images", str(root), "--out", str(tmp_path / "q.safetensors"), "--workers", "1",
                                "--resize-long", "0", "--no-progress"]))
    err = capsys.readouterr().err
    assert rc == 2 and "no space left on the device while writing" in err and "q.safetensors" in err


def _spawned_children(parent: int) -> list[int]:
    """Pids of the multiprocessing spawn workers whose parent is ``parent`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited and only waits to be reaped


@pytest.mark.slow  # two spawned workers import torch: 15-60 s on a busy 2-core CPU
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through Linux /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    root = make_folder(tmp_path / "imgs", n=64, size=(160, 120))
    parent = subprocess.Popen([sys.executable, "-m", "d3ssl_zoo.cli", "proposals", "--images", str(root),
                               "--out", str(tmp_path / "p.safetensors"), "--workers", "2", "--resize-long", "0",
                               "--flush-every", "1", "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "p.safetensors.parts"
    try:  # kill it mid-run: once the workers have written their first results
        deadline = time.monotonic() + 120
        workers = []
        while time.monotonic() < deadline and parent.poll() is None and not (
                len(workers) == 2 and parts.is_dir() and any(parts.glob("part-*"))):
            time.sleep(0.05)
            workers = _spawned_children(parent.pid)
        assert len(workers) == 2 and parent.poll() is None, "the tool did not start its two workers"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5  # generous: the workers exit with the parent
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [w for w in workers if _alive(w)]
    for w in left:  # do not leave them running if the assertion fails
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed parent"
