"""Detection fine-tuning resumes exactly: relaunched from a checkpoint, ``train/finetune_det.py`` takes
the same steps and writes the same weights, bit for bit, as the run that was never interrupted.

One uninterrupted run (6 made-up VOC images, 2 per batch: 3 steps an epoch, 5 steps, a checkpoint
after each) gives the checkpoints a killed run would have left; each test copies one of them into a
new output folder, relaunches the script with ``--resume`` and compares: the losses logged after the
resume, every later checkpoint's weights and optimiser state, and the final ``model.safetensors``
(written after precise BN)."""
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STEPS, PER_EPOCH = 5, 3

# A tiny detector; two training sizes and two precise-BN batches so that the detector's own random draws
# (training size, RPN and RoI sampling) and precise BN take part.
SETTINGS = [
    "voc_train=[['2007', trainval]]", "min_size_train=[64, 72]", "min_size_test=64", "max_size=96",
    "anchor_sizes=[16, 32, 64]", "rpn_pre_nms_train=300", "rpn_post_nms_train=64", "rpn_pre_nms_test=300",
    "rpn_post_nms_test=32", "rpn_batch_per_image=64", "roi_batch_per_image=32", "ims_per_batch=2",
    "steps=[4]", "warmup_iters=2", "checkpoint_period=1", "log_period=1", "sync_bn=false", "base_lr=0.01",
    "precise_bn_iters=2",
]


def _make_voc(root: Path, num_images: int = 2 * PER_EPOCH) -> Path:
    """A VOCdevkit with VOC2007 trainval, one coloured rectangle (a cat or a dog) per noise image, and a
    one-image test split."""
    base = root / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(num_images):
        arr = rng.integers(90, 140, (48, 64, 3)).astype(np.uint8)
        x1, y1 = int(rng.integers(1, 30)), int(rng.integers(1, 20))
        name, colour = (("cat", (230, 40, 40)), ("dog", (40, 40, 230)))[i % 2]
        arr[y1 - 1:y1 + 20, x1 - 1:x1 + 25] = colour
        Image.fromarray(arr).save(base / "JPEGImages" / f"{i}.jpg", quality=95)
        (base / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><size><width>64</width><height>48</height><depth>3</depth></size><object><name>{name}"
            f"</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x1 + 25}</xmax>"
            f"<ymax>{y1 + 20}</ymax></bndbox></object></annotation>")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in range(num_images)))
    (base / "ImageSets" / "Main" / "test.txt").write_text("0\n")   # read, never evaluated (--no-eval)
    return root


def _finetune(data: Path, out: Path, *extra: str) -> dict:
    """Run the script in a new process; the losses it logged, by step."""
    cmd = [sys.executable, str(ROOT / "train" / "finetune_det.py"), "--task", "voc", "--model", "d3ssl_r18c4",
           "--data", str(data), "--output-dir", str(out), "--no-eval", "--max-iter", str(STEPS), *extra,
           "--set", *SETTINGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {int(s): line for s, line in re.findall(r"\[finetune_det\] step (\d+)/\d+ (.*)", proc.stdout)}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _optimizer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "optimizer.bin", map_location="cpu", weights_only=True)["state"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The data and the uninterrupted run: its output folder and its logged losses."""
    root = tmp_path_factory.mktemp("detection_resume")
    data = _make_voc(root / "VOCdevkit")
    out = root / "uninterrupted"
    return data, out, _finetune(data, out, "--set", "num_workers=0")


def _resume_and_compare(uninterrupted, tmp_path: Path, step: int, num_workers: int) -> None:
    data, full, full_losses = uninterrupted
    assert sorted(full_losses) == list(range(1, STEPS + 1))
    out = tmp_path / "resumed"
    name = f"step_{step:08d}"
    shutil.copytree(full / "checkpoints" / name, out / "checkpoints" / name)   # what a run killed after it leaves
    losses = _finetune(data, out, "--resume", "--set", f"num_workers={num_workers}")
    assert losses == {s: line for s, line in full_losses.items() if s > step}
    for later in range(step + 1, STEPS + 1):
        a, b = (run / "checkpoints" / f"step_{later:08d}" for run in (full, out))
        assert _digest(a / "model.safetensors") == _digest(b / "model.safetensors"), f"weights after step {later}"
        sa, sb = _optimizer_state(a), _optimizer_state(b)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])
                                              for k in sa), f"optimiser state after step {later}"
    assert _digest(full / "model.safetensors") == _digest(out / "model.safetensors"), "final weights"


@pytest.mark.slow
def test_resumed_mid_epoch_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    _resume_and_compare(uninterrupted, tmp_path, 1, num_workers=0)


@pytest.mark.slow
def test_resumed_mid_epoch_with_data_workers_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    # num_workers may change on resume: worker processes draw nothing a step depends on
    _resume_and_compare(uninterrupted, tmp_path, PER_EPOCH + 1, num_workers=2)


@pytest.mark.slow
def test_resumed_after_an_epoch_boundary_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    _resume_and_compare(uninterrupted, tmp_path, PER_EPOCH, num_workers=0)


@pytest.mark.slow
def test_resumed_from_the_last_checkpoint_writes_the_same_detector(uninterrupted, tmp_path):
    # nothing left to train: precise BN and the final weights only (a run stopped while writing them)
    _resume_and_compare(uninterrupted, tmp_path, STEPS, num_workers=0)


@pytest.mark.slow
def test_resume_with_another_number_of_processes_is_refused(uninterrupted, tmp_path):
    # each process restores its own RNG states: a checkpoint of 2 processes cannot continue exactly on 1
    data, full, _ = uninterrupted
    ckpt = tmp_path / "resumed" / "checkpoints" / "step_00000002"
    shutil.copytree(full / "checkpoints" / ckpt.name, ckpt)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "num_processes": 2}))
    cmd = [sys.executable, str(ROOT / "train" / "finetune_det.py"), "--task", "voc", "--model", "d3ssl_r18c4",
           "--data", str(data), "--output-dir", str(tmp_path / "resumed"), "--no-eval", "--max-iter", str(STEPS),
           "--resume", "--set", "num_workers=0", *SETTINGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"checkpoint {ckpt} was written by 2 process(es), this run has 1" in proc.stderr
    assert not (ckpt.parent / "step_00000003").exists()
