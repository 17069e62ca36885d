"""Detection training batches (d3ssl_zoo/detection/sampler.py): grouped by aspect ratio, sharded exactly
across processes, resumable mid-epoch; and the fine-tuning loop on 2 CPU processes (gloo)."""
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from launching import ENV, ROOT, accelerate, capture
from PIL import Image

from d3ssl_zoo.detection.sampler import GroupedShardedBatchSampler, aspect_groups


def _epoch(groups, batch_size, num_replicas, epoch=0, seed=0):
    """Each process's batches of one epoch."""
    out = []
    for rank in range(num_replicas):
        s = GroupedShardedBatchSampler(groups, batch_size, num_replicas=num_replicas, rank=rank, seed=seed)
        s.set_epoch(epoch)
        out.append(list(s))
        assert len(out[-1]) == len(s)
    return out


def test_aspect_groups_split_wide_and_square_from_tall():
    assert aspect_groups([(96, 64), (64, 64), (64, 96), (63, 64)]) == [0, 0, 1, 1]


@pytest.mark.parametrize("n_wide,n_tall,batch_size,num_replicas", [(8, 4, 2, 2), (7, 5, 2, 2), (5, 6, 3, 4),
                                                                  (1, 0, 4, 3), (10, 3, 1, 1)])
def test_every_batch_is_one_group_and_every_image_is_seen_once_per_epoch(n_wide, n_tall, batch_size,
                                                                         num_replicas):
    groups = [0] * n_wide + [1] * n_tall
    rng = np.random.default_rng(0)
    groups = [groups[i] for i in rng.permutation(len(groups))]
    per_rank = _epoch(groups, batch_size, num_replicas)
    assert len({len(b) for b in per_rank}) == 1, "every process takes the same number of steps"
    batches = [b for r in per_rank for b in r]
    assert all(len(b) == batch_size and len({groups[i] for i in b}) == 1 for b in batches)
    seen = Counter(i for b in batches for i in b)
    assert set(seen) == set(range(len(groups)))
    # the only repeats: filling each group's last batch, then whole batches to even the processes
    fill = sum(-n % batch_size for n in (n_wide, n_tall) if n)
    n_batches = sum(-(-n // batch_size) for n in (n_wide, n_tall))
    even = (-n_batches % num_replicas) * batch_size
    assert sum(seen.values()) - len(groups) == fill + even


def test_an_exact_fit_has_no_repeats_and_the_processes_share_nothing():
    groups = [0, 1] * 8
    per_rank = _epoch(groups, 2, 4)
    indices = [i for r in per_rank for b in r for i in b]
    assert sorted(indices) == list(range(16))


def test_epochs_shuffle_differently_and_a_seed_repeats_its_epochs():
    groups = [0, 0, 1, 1, 0, 1, 0, 1, 0, 0]
    assert _epoch(groups, 2, 2, epoch=0) == _epoch(groups, 2, 2, epoch=0)
    assert _epoch(groups, 2, 2, epoch=0) != _epoch(groups, 2, 2, epoch=1)
    assert _epoch(groups, 2, 2, seed=1) != _epoch(groups, 2, 2, seed=0)


def test_set_epoch_start_resumes_at_the_batch_an_uninterrupted_run_takes_next():
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0]
    s = GroupedShardedBatchSampler(groups, 2, num_replicas=2, rank=1, seed=3)
    s.set_epoch(2)
    full = list(s)
    for k in range(len(full) + 1):
        s.set_epoch(2, start=k)
        assert list(s) == full[k:]
    assert list(s) == full, "the next pass over the same epoch starts at its beginning"
    assert len(full) == 4   # 7 wide and 5 tall images in batches of 2: 4 + 3 batches, evened to 8
    with pytest.raises(ValueError, match=r"start 5 is outside an epoch of 4 batches"):
        s.set_epoch(2, start=5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank 2 is not one of the 2 processes"):
        GroupedShardedBatchSampler([0, 1], 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        GroupedShardedBatchSampler([0, 1], 0)


# --- the fine-tuning loop on 2 processes -----------------------------------------------------------------

TINY = ["min_size_train=[64]", "min_size_test=64", "max_size=96", "anchor_sizes=[16, 32, 64]",
        "rpn_pre_nms_train=300", "rpn_post_nms_train=64", "rpn_pre_nms_test=300", "rpn_post_nms_test=32",
        "rpn_batch_per_image=64", "roi_batch_per_image=32", "ims_per_batch=2", "steps=[100]", "warmup_iters=1",
        "log_period=1", "sync_bn=false", "precise_bn_iters=0", "num_workers=0"]


def _launch_two(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = accelerate(2, ROOT / "train" / "finetune_det.py", *args)
    return capture(cmd, timeout=timeout, env={**ENV, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


@pytest.mark.slow
def test_two_processes_fine_tune_coco_on_every_image_and_score_on_the_main_process(tmp_path, write_coco):
    # 7 images, 4 wide and 3 tall, 1 per process and step: 7 batches, evened to 8 = 4 steps an epoch
    # (a loader that drops the last incomplete batch trains 3 steps and never sees one image)
    write_coco(tmp_path, name="train", num_images=7, hw=(64, 96))
    out = tmp_path / "run"
    proc = _launch_two("--task", "coco", "--model", "d3ssl_r18c4", "--data", str(tmp_path), "--output-dir", str(out),
                       "--max-iter", "4", "--set", *TINY, "mask_on=false", "num_classes=4", "checkpoint_period=4",
                       "coco_train=[train.json, train]", "coco_test=[train.json, train]")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and "[finetune_det] step 4/4" in proc.stdout
    assert proc.stdout.count("[finetune_det] coco train:") == 1, "the annotations are read on the main process"
    state = json.loads((out / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["steps_per_epoch"] == 4 and state["num_processes"] == 2
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["bbox"]["AP"] <= 100.0


def _make_voc(root: Path) -> Path:
    """6 VOC2007 trainval images of 64x48 with one cat each, and a one-image test split."""
    base = root / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(60, 200, (48, 64, 3)).astype(np.uint8)).save(base / "JPEGImages" / f"{i}.jpg")
        (base / "Annotations" / f"{i}.xml").write_text(
            "<annotation><size><width>64</width><height>48</height><depth>3</depth></size><object><name>cat</name>"
            "<difficult>0</difficult><bndbox><xmin>10</xmin><ymin>5</ymin><xmax>40</xmax><ymax>30</ymax>"
            "</bndbox></object></annotation>")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in range(6)))
    (base / "ImageSets" / "Main" / "test.txt").write_text("0\n")
    return root


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_stops_both(tmp_path):
    # an absurd learning rate: the weights overflow within a few steps
    data = _make_voc(tmp_path / "VOCdevkit")
    out = tmp_path / "run"
    proc = _launch_two("--task", "voc", "--model", "d3ssl_r18c4", "--data", str(data), "--output-dir", str(out),
                       "--no-eval", "--max-iter", "6", "--set", *TINY, "voc_train=[['2007', trainval]]",
                       "log_period=3", "checkpoint_period=2", "base_lr=1e9", timeout=240)
    assert proc.returncode != 0
    # checked at log lines and checkpoints, over both processes: both stop, naming the same first bad step
    found = [int(s) for s in re.findall(r"the training loss was not finite \(nan or inf\) at step (\d+)", proc.stderr)]
    assert len(found) == 2 and found[0] == found[1], proc.stderr[-3000:]
    saved = [int(p.name[5:]) for p in (out / "checkpoints").glob("step_*")]
    assert all(s < found[0] for s in saved), f"a checkpoint after the bad step {found[0]}: {saved}"
    assert not (out / "model.safetensors").exists()
