"""Tests of benchmarks/gpu_check.py: the recipe's settings as its defaults, its CPU smoke mode on a tiny image
folder, the halving of a batch that does not fit, the SyncBN count of the real R50-C4 methods, the bill's label,
the 2-process DDP timing (gloo on CPU), and its refusal without CUDA."""
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from d3ssl_zoo.data import PretrainCollator, build_pretrain_dataset
from d3ssl_zoo.engine import load_recipe
from d3ssl_zoo.method import momentum_at
from d3ssl_zoo.tags import recipe_file

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # importlib's recipe for a source file; its dataclass and pickling need it
_spec.loader.exec_module(gpu_check)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory, make_tiny_source):
    """4 random-texture images with 3 hand-made proposals each (no selective search: seconds, not minutes)."""
    return make_tiny_source(tmp_path_factory.mktemp("gpu_check"), num_images=4)


def _tiny_recipe(name, tiny_source, *extra):
    """The shipped COCO recipe of ``name`` at --quick's sizes on the tiny folder."""
    images, proposals = tiny_source
    return load_recipe(recipe_file(gpu_check.RECIPES[name]), [*gpu_check.QUICK_OVERRIDES, "data.num_proposals=3",
                                                              f"dataset.source={images}",
                                                              f"dataset.proposals={proposals}", *extra])


def _batch(recipe, n=2):
    dataset = build_pretrain_dataset(recipe.data, recipe.dataset.source, recipe.dataset.proposals,
                                     seed=recipe.train.seed)
    return PretrainCollator(recipe.data)([dataset[i % len(dataset)] for i in range(n)])


# --- the run the recipe makes ---------------------------------------------------------------------------------------

def test_the_plan_is_the_recipes_batch_accumulation_and_peak_lr():
    recipe = load_recipe(recipe_file("d3ssl_r50c4.coco_800ep"))
    plan = gpu_check.plan_of(recipe, gpus=8)
    # 1024 = 128 per GPU x 8 GPUs (SoCo's C4 setting); lr 1.0 per 256 images, linearly scaled
    assert (plan.batch, plan.accumulation, plan.global_batch) == (recipe.train.batch_size, 1, 1024) == (128, 1, 1024)
    assert plan.peak_lr == pytest.approx(4.0)
    spe = 118_287 // 1024  # 115 steps per epoch on COCO train2017
    assert (plan.warmup_steps, plan.total_steps) == (10 * spe, 800 * spe)
    assert plan.teacher_momentum == momentum_at(10 * spe, 800 * spe, 0.99, 1.0)
    assert 0.99 < plan.teacher_momentum < 0.9901
    one = gpu_check.plan_of(recipe, gpus=1)  # the same global batch and lr with 8 accumulated micro-batches
    assert (one.accumulation, one.global_batch, one.peak_lr) == (8, 1024, plan.peak_lr)
    smaller = gpu_check.plan_of(load_recipe(recipe_file("d3ssl_r50c4.coco_800ep"), ["train.batch_size=64"]), gpus=8)
    assert (smaller.batch, smaller.accumulation, smaller.global_batch) == (64, 2, 1024)
    with pytest.raises(ValueError, match="cannot be reached"):
        gpu_check.plan_of(recipe, gpus=8, batch=96)
    text = plan.describe(recipe)
    assert "peak lr 4" in text and "global batch 1024 / 256" in text and "LARS momentum 0.9" in text


def test_a_batch_that_does_not_fit_is_halved_until_it_fits():
    tried = []

    def try_batch(b):
        tried.append(b)
        if b > 32:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at {b}")
        return {"images": b}

    assert gpu_check.largest_batch_that_fits(try_batch, 128) == (32, {"images": 32}, [128, 64])
    assert tried == [128, 64, 32]
    assert gpu_check.largest_batch_that_fits(try_batch, 16) == (16, {"images": 16}, [])

    def never(b):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        gpu_check.largest_batch_that_fits(never, 4)

    def broken(b):
        raise RuntimeError("not a memory error")

    with pytest.raises(RuntimeError, match="not a memory error"):  # other errors are not taken for OOM
        gpu_check.largest_batch_that_fits(broken, 4)


def test_the_fit_note_gives_the_batch_and_accumulation_the_run_needs():
    recipe = load_recipe(recipe_file("d3ssl_r50c4.coco_800ep"))
    plan = gpu_check.plan_of(recipe, gpus=8)
    assert gpu_check.fit_note(recipe, plan, 128, [])["advice"] is None
    note = gpu_check.fit_note(recipe, plan, 32, [128, 64])
    assert (note["asked"], note["fits"], note["too_big"], note["accumulation"]) == (128, 32, [128, 64], 4)
    assert "set train.batch_size=32" in note["advice"] and "accumulates 4 micro-batches" in note["advice"]
    assert "global batch 1024" in note["advice"]
    odd = gpu_check.fit_note(recipe, plan, 48, [96])  # 1024 is no multiple of 8 x 48
    assert odd["accumulation"] is None and "cannot be reached" in odd["advice"]


def test_the_bill_is_labelled_by_what_was_measured():
    sync = {"layers": 108, "forward": 270, "backward": 162}
    one = gpu_check.bill_basis(None, sync, sync_bn=True)
    assert one.startswith("one-GPU lower bound: ignores SyncBN synchronisation (270 SyncBN layer calls")
    assert "162 in the backward" in one and "gradient all-reduce" in one
    assert "SyncBN" not in gpu_check.bill_basis(None, sync, sync_bn=False).split("(")[0]
    assert gpu_check.bill_basis({"processes": 2, "sync_bn": True}, sync, True) == "2-process DDP + SyncBN"
    assert gpu_check.bill_basis({"processes": 2, "sync_bn": False}, sync, True) == "2-process DDP (no SyncBN)"


def test_memory_format_advice():
    assert gpu_check.memory_format_advice(1.25, "contiguous") == (
        "channels_last is 25% faster: set train.memory_format=channels_last")
    assert gpu_check.memory_format_advice(1.25, "channels_last").endswith("keep train.memory_format=channels_last")
    assert gpu_check.memory_format_advice(0.8, "contiguous") == (
        "channels_last does not help (contiguous is 25% faster): keep train.memory_format=contiguous")
    assert gpu_check.memory_format_advice(0.8, "channels_last").endswith("set train.memory_format=contiguous")
    assert gpu_check.memory_format_advice(1.01, "contiguous").startswith("channels_last does not help (x1.01")


def test_sync_bn_is_counted_on_the_real_r50_c4_methods(tiny_source, one_thread):
    # ResNet-50-C4 region encoder: stem 1 + layer1-3 (3+4+6 bottlenecks x 3, + 3 downsample) 43 BN to C4, the
    # layer4 head 3 x 3 + 1 = 10, the projector 1: 54 BN layers a pass. D3SSL: student x1, x2-s, x3 and teacher
    # x1, x2 = 5 passes (Eq. 3, 8); SoCo: 2 + 2 passes and the predictor's BN on the 2 student passes.
    for name, model, layers, forward, backward in (("d3ssl", "d3ssl_r50c4", 2 * 54, 5 * 54, 3 * 54),
                                                   ("soco", "soco_r50c4", 2 * 54 + 1, 4 * 54 + 2, 2 * 54 + 2)):
        recipe = _tiny_recipe(name, tiny_source, f"model.name={model}")
        assert gpu_check.count_sync_bn(recipe, _batch(recipe), torch.device("cpu")) == {
            "layers": layers, "forward": forward, "backward": backward}, name


# --- the script ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cpu_smoke_mode_measures_the_recipes_run(tiny_source, tmp_path, one_thread):
    images, proposals = tiny_source
    out = tmp_path / "check.json"
    # no --batch, --workers, --precision: the recipe's (with --quick's tiny overrides: a global batch of 16)
    returned = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), "data.num_proposals=3",
                               "train.memory_format=channels_last",
                               f"dataset.source={images}", f"dataset.proposals={proposals}"])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["device"] == "cpu" and report["quick"] and report["gpus"] == 8 and report["source"] == str(images)
    assert report["cudnn"]["benchmark"] is False  # set on CUDA only
    assert set(report["methods"]) == {"d3ssl", "soco"}
    workers = min(8, len(os.sched_getaffinity(0)))  # the recipe's train.num_workers, capped by the cores
    # ResNet-18-C4 (--quick): 21 BN layers a region-encoder pass (stem 1, layer1-3 4 + 5 + 5, head 5, projector 1)
    counts = {"d3ssl": {"layers": 42, "forward": 105, "backward": 63},
              "soco": {"layers": 43, "forward": 86, "backward": 44}}
    for name, m in report["methods"].items():
        plan = m["plan"]
        assert (plan["batch"], plan["accumulation"], plan["global_batch"], plan["gpus"]) == (2, 1, 16, 8)
        assert plan["peak_lr"] == pytest.approx(1.0 * 16 / 256)
        assert (m["precision"], m["memory_format"], m["num_workers"]) == ("bf16", "channels_last", workers)
        assert m["sync_bn"] == counts[name]
        assert m["fits"] == {"asked": 2, "fits": 2, "too_big": [], "accumulation": 1, "advice": None}
        for fmt in ("contiguous", "channels_last"):
            f = m["compute"][fmt]
            assert f["memory_format"] == fmt and f["batch"] == 2 and f["loss_finite"]
            assert f["steps_per_s"] > 0 and f["images_per_s"] == pytest.approx(2 * f["steps_per_s"])
            assert f["step_ms"] == pytest.approx(1000 / f["steps_per_s"])
            assert f["peak_memory_gib"] is None  # no CUDA memory counter on CPU
        assert m["channels_last_speedup"] == pytest.approx(
            m["compute"]["channels_last"]["images_per_s"] / m["compute"]["contiguous"]["images_per_s"])
        assert m["memory_format_advice"] == gpu_check.memory_format_advice(m["channels_last_speedup"], "channels_last")
        r = m["real_data"]
        assert (r["steps"], r["batch"], r["num_workers"], r["memory_format"]) == (2, 2, workers, "channels_last")
        assert r["lr"] == plan["peak_lr"] and r["teacher_momentum"] == plan["teacher_momentum"]
        assert len(r["loss"]) == 2 and all(math.isfinite(v) and v > 0 for v in r["loss"]) and r["loss_finite"]
        assert 0.0 <= r["data_wait_share"] <= 1.0 and r["epoch_restarts"] == 1  # 4 images: 2 batches of 2
        assert r["data_wait_share_steady"] is not None and 0.0 <= r["data_wait_share_steady"] <= 1.0
        assert r["images_per_s"] == pytest.approx(2000 / r["step_ms"])
        # one device: the one-GPU measurement, in the recipe's format, labelled with the counted SyncBN calls
        assert m["ddp"] is None
        assert m["bill_images_per_s_per_gpu"] == m["compute"]["channels_last"]["images_per_s"]
        assert m["bill_basis"].startswith(f"one-GPU lower bound: ignores SyncBN synchronisation "
                                          f"({counts[name]['forward']} SyncBN layer calls")
    # SoCo's loss is a sum of two 2 - 2 cos terms: within [0, 8]
    assert all(0.0 <= v <= 8.0 for v in report["methods"]["soco"]["real_data"]["loss"])
    # the bill: every shipped COCO recipe of a measured method and views
    assert set(report["bill"]) == {"d3ssl_r50c4.coco_200ep", "d3ssl_r50c4.coco_800ep", "soco_r50c4.coco_800ep"}
    for tag, b in report["bill"].items():
        m = report["methods"][tag.split("_")[0]]
        ips = m["bill_images_per_s_per_gpu"]
        assert b["images_per_s_per_gpu"] == ips and b["basis"] == m["bill_basis"]
        assert b["gpu_hours"] == pytest.approx(b["epochs"] * 118_287 / ips / 3600)
        assert b["hours"] == pytest.approx(b["gpu_hours"] / 8) and b["gpus"] == 8
    assert report["bill"]["d3ssl_r50c4.coco_800ep"]["epochs"] == 800
    assert report["all_losses_finite"]


@pytest.mark.slow
def test_two_process_ddp_step_time(tiny_source, monkeypatch, one_thread):
    # spawned processes import the script by name: the benchmarks folder on their path
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    recipe = _tiny_recipe("d3ssl", tiny_source)
    plan = gpu_check.plan_of(recipe, gpus=8)
    ddp = gpu_check.measure_ddp(recipe, _batch(recipe), "no", plan, warmup=0, timed=1, device_type="cpu")
    # gloo on CPU: DDP without SyncBN, as the trainer runs several CPU processes
    assert (ddp["processes"], ddp["backend"], ddp["sync_bn"], ddp["batch"]) == (2, "gloo", False, 2)
    assert ddp["images_per_s"] == pytest.approx(2 * 2 * 1000 / ddp["step_ms"])
    assert ddp["images_per_s_per_gpu"] == pytest.approx(ddp["images_per_s"] / 2) and ddp["loss_finite"]
    assert gpu_check.bill_basis(ddp, {}, True) == "2-process DDP (no SyncBN)"


def test_refuses_without_cuda_and_says_how_to_smoke_test(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        gpu_check.check_device("cuda")
    assert "no CUDA device" in str(e.value) and "--device cpu --quick" in str(e.value)
    assert gpu_check.check_device("cpu") == torch.device("cpu")


def test_defaults_are_the_recipes_and_quick_the_tiny_steps():
    full = gpu_check.parse_args([])
    assert (full.device, full.steps, full.timed_steps, full.warmup, full.gpus) == ("cuda", 100, 30, 5, 8)
    assert (full.batch, full.workers, full.precision) == (None, None, None)  # the recipe's, read by check_method
    quick = gpu_check.parse_args(["--device", "cpu", "--quick"])
    assert (quick.batch, quick.steps, quick.timed_steps, quick.warmup) == (None, 2, 1, 0)
    assert gpu_check.parse_args(["--quick", "--batch", "4"]).batch == 4
    for bad in (["--steps", "0"], ["--gpus", "0"], ["--batch", "0"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)
