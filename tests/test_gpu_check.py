"""Tests of benchmarks/gpu_check.py: its CPU smoke mode on a tiny image folder, and its refusal without CUDA."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d3ssl_zoo.data.proposal_store import ProposalEntry, write_proposal_file

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _tiny_folder(root: Path, num_images=4, w=80, h=64):
    """Random-texture images and a hand-made proposal file (no selective search: seconds, not minutes)."""
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(num_images):
        img = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).resize((w, h), Image.NEAREST).save(images / f"img{i}.png")
        boxes = np.array([[4, 4, 40, 50], [30, 10, 76, 60], [10, 30, 50, 62], [0, 0, 80, 64]], np.float32)
        entries.append(ProposalEntry(i, f"img{i}.png", w, h, 0, boxes))
    proposals = root / "proposals.safetensors"
    write_proposal_file(proposals, entries, mode="fast", resize_long=None)
    return images, proposals


@pytest.fixture
def one_thread():
    # the shared CI cores: two OpenMP threads that spin-wait on a loaded machine make these tiny steps 10x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_cpu_smoke_mode_writes_sane_numbers(tmp_path, one_thread):
    images, proposals = _tiny_folder(tmp_path)
    out = tmp_path / "check.json"
    returned = gpu_check.main(["--device", "cpu", "--quick", "--workers", "1", "--out", str(out),
                              f"dataset.source={images}", f"dataset.proposals={proposals}"])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["device"] == "cpu" and report["quick"] and report["precision"] == "bf16"
    assert report["batch_per_device"] == 2 and report["num_workers"] == 1 and report["source"] == str(images)
    assert set(report["compute"]) == set(report["real_data"]) == {"d3ssl", "soco"}
    for name in ("d3ssl", "soco"):
        c = report["compute"][name]
        for fmt in ("contiguous", "channels_last"):
            f = c[fmt]
            assert f["steps_per_s"] > 0 and f["images_per_s"] == pytest.approx(2 * f["steps_per_s"])
            assert f["step_ms"] == pytest.approx(1000 / f["steps_per_s"])
            assert f["peak_memory_gib"] is None and f["loss_finite"]  # no CUDA memory counter on CPU
        assert c["channels_last_speedup"] == pytest.approx(
            c["channels_last"]["images_per_s"] / c["contiguous"]["images_per_s"])
        assert c["channels_last_helps"] == (c["channels_last_speedup"] > gpu_check.CHANNELS_LAST_HELPS)
        assert c["best_images_per_s"] == max(c["contiguous"]["images_per_s"], c["channels_last"]["images_per_s"])
        r = report["real_data"][name]
        assert r["steps"] == 2 and len(r["loss"]) == 2 and all(math.isfinite(v) and v > 0 for v in r["loss"])
        assert r["loss_finite"] and r["memory_format"] == ("channels_last" if c["channels_last_helps"]
                                                           else "contiguous")
        assert 0.0 <= r["data_wait_share"] <= 1.0 and r["epoch_restarts"] == 1  # 4 images: 2 batches of 2
        assert r["data_wait_share_steady"] is not None and 0.0 <= r["data_wait_share_steady"] <= 1.0
        assert r["images_per_s"] == pytest.approx(2000 / r["step_ms"])
    # SoCo's loss is a sum of two 2 - 2 cos terms: within [0, 8]
    assert all(0.0 <= v <= 8.0 for v in report["real_data"]["soco"]["loss"])
    # the bill: every shipped COCO recipe of a measured method and views, at the best measured rate
    assert set(report["bill"]) == {"d3ssl_r50c4.coco_200ep", "d3ssl_r50c4.coco_800ep", "soco_r50c4.coco_800ep"}
    for tag, b in report["bill"].items():
        ips = report["compute"][tag.split("_")[0]]["best_images_per_s"]
        assert b["images_per_s"] == ips
        assert b["gpu_hours"] == pytest.approx(b["epochs"] * 118_287 / ips / 3600)
    assert report["bill"]["d3ssl_r50c4.coco_800ep"]["epochs"] == 800
    assert report["all_losses_finite"]


def test_refuses_without_cuda_and_says_how_to_smoke_test(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        gpu_check.check_device("cuda")
    assert "no CUDA device" in str(e.value) and "--device cpu --quick" in str(e.value)
    assert gpu_check.check_device("cpu") == torch.device("cpu")


def test_defaults_are_the_gpu_sizes_and_quick_the_tiny_ones():
    full = gpu_check.parse_args([])
    assert (full.device, full.batch, full.steps, full.timed_steps, full.precision) == ("cuda", 64, 100, 30, "bf16")
    quick = gpu_check.parse_args(["--device", "cpu", "--quick"])
    assert (quick.batch, quick.steps, quick.timed_steps, quick.warmup) == (2, 2, 1, 0)
    assert gpu_check.parse_args(["--quick", "--batch", "4"]).batch == 4
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "0"])
