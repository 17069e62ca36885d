"""Preemption through the user's path: a scheduler's SIGTERM or SIGUSR1 reaches a real ``accelerate launch
train/pretrain.py`` run mid-epoch; the run writes a checkpoint at the next step boundary on every rank, exits with
status 143, and the same command relaunched ends bit-identical to the run nobody stopped.
"""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import launching
import psutil
import pytest
import torch
from launching import PRETRAIN, capture, checkpoint_state, pretrain

from d3ssl_zoo.checkpoint import STATE_FILE, list_checkpoints

ENV = {**launching.ENV, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_source, tiny_overrides):
    """10 images in micro-batches of 2: 5 steps per epoch on one process, 2 on two; 4 epochs; one data worker
    (it gets the signal too); no periodic checkpoint before the last step."""
    images, proposals = make_tiny_source(tmp_path_factory.mktemp("preempt"), num_images=10)
    return [*tiny_overrides(images, proposals), "train.epochs=4", "train.num_workers=1",
            "train.checkpoint_every=1000", "train.keep_last=5"]


def _run(out: Path, overrides: list[str], nproc: int) -> subprocess.CompletedProcess:
    return capture(pretrain(out, overrides, nproc), env=ENV)


def _preempt(out: Path, overrides: list[str], nproc: int, signum: int, tmp_path: Path, launcher: bool):
    """Start the run, wait until it is a few steps into epoch 0, send ``signum`` (to the whole process group, as
    a scheduler does, or only to the rank-0 training process) and wait for the exit."""
    log = tmp_path / f"stderr_{nproc}.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(pretrain(out, overrides, nproc), env=ENV, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        try:
            end = time.monotonic() + 300
            while not re.search(r"\b[2-9]/\d+ \[", log.read_text()):  # the progress bar says step 2 or later
                assert proc.poll() is None and time.monotonic() < end, log.read_text()[-3000:]
                time.sleep(0.05)
            if launcher:
                os.killpg(proc.pid, signum)
            else:
                ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if str(PRETRAIN) in p.cmdline()]
                # a rank's data workers are its forked children, with its command line and environment
                rank0 = [p for p in ranks if p.environ().get("RANK", "0") == "0" and p.parent() not in ranks]
                assert len(rank0) == 1, rank0
                rank0[0].send_signal(signum)
            stdout, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return proc.returncode, stdout, log.read_text()


def _check_resumes_exactly(straight: Path, out: Path, overrides: list[str], nproc: int, stderr: str) -> None:
    found = re.search(r"pretrain\.py: preempted: stopped after step (\d+)/(\d+), checkpoint (\S+); the same command "
                      r"continues from it \(exit status 143: requeue the job\)", stderr)
    assert found, stderr[-3000:]
    step, total = int(found[1]), int(found[2])
    assert 2 <= step < total
    ckpts = list_checkpoints(out)
    assert [str(c) for c in ckpts] == [found[3]]  # the only checkpoint: written at the boundary on the way out
    assert json.loads((ckpts[0] / STATE_FILE).read_text())["step"] == step
    again = _run(out, overrides, nproc)  # the same command: --resume auto
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {ckpts[0]} at step {step}/{total}" in again.stdout
    final = f"checkpoints/step_{total:08d}"
    a, b = checkpoint_state(straight / final), checkpoint_state(out / final)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    exported = [(d / "export" / "model.safetensors").read_bytes() for d in (straight, out)]
    assert exported[0] == exported[1]


@pytest.mark.slow
def test_sigterm_to_the_launch_checkpoints_at_the_step_boundary_exits_143_and_resumes_exactly(tiny, tmp_path):
    straight = tmp_path / "straight"
    ref = _run(straight, tiny, 1)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "run"
    status, _, stderr = _preempt(out, tiny, 1, signal.SIGTERM, tmp_path, launcher=True)
    assert status == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    _check_resumes_exactly(straight, out, tiny, 1, stderr)


@pytest.mark.slow
def test_sigusr1_to_one_rank_stops_both_ranks_at_the_same_step_and_resumes_exactly(tiny, tmp_path):
    straight = tmp_path / "straight"
    ref = _run(straight, tiny, 2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "run"
    status, _, stderr = _preempt(out, tiny, 2, signal.SIGUSR1, tmp_path, launcher=False)
    # the launcher reports its workers' status 143 as a failure of its own
    assert status != 0 and "exitcode  : 143" in stderr, stderr[-3000:]
    assert "Traceback (most recent call last)" not in stderr.split("exitcode")[0], stderr[-3000:]
    _check_resumes_exactly(straight, out, tiny, 2, stderr)
