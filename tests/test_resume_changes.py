"""Resuming after changes that do not change the result, through ``train/pretrain.py`` in real processes.

A relaunch may move the data (recognised by its image names and sizes, not its path), change the loader
workers, the logging and checkpoint intervals, ``keep_last`` or the tracker (each change logged) and the
number of processes (the accumulation is re-derived for the recipe's global batch); a change of a key that
defines the run, or data whose content differs, is refused naming it.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from launching import capture, ok, pretrain, small_run
from safetensors.torch import load_file

from d3ssl_zoo.engine.config import resumable_keys


def _overrides(images: Path, proposals: Path, *extra: str) -> list[str]:
    # 8 images, global batch 4 in micro-batches of 2: 2 steps, one checkpoint after each
    return small_run(images, proposals, "train.epochs=1", *extra)


def launch(out: Path, overrides: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    return capture(pretrain(out, overrides, nproc))


def _relaunch_from(straight: Path, run: Path, step: int) -> None:
    """What a kill after ``step`` leaves behind: the run folder with that checkpoint only."""
    src = straight / "checkpoints" / f"step_{step:08d}"
    shutil.copytree(src, run / "checkpoints" / src.name)


def test_the_split_is_declared_on_the_recipe_fields():
    assert set(resumable_keys()) == {"dataset.source", "dataset.proposals", "train.num_workers",
                                     "train.log_every", "train.checkpoint_every", "train.keep_last",
                                     "train.tracker", "train.memory_format", "data.images_dir"}


@pytest.mark.slow
def test_moved_data_and_other_intervals_resume_to_the_same_weights(tmp_path, make_tiny_source):
    images, proposals = make_tiny_source(tmp_path / "data")
    straight = tmp_path / "straight"
    ok(launch(straight, _overrides(images, proposals)))
    # the data copied to another disk, other log / checkpoint intervals and keep_last
    moved = tmp_path / "scratch"
    shutil.copytree(tmp_path / "data", moved)
    run = tmp_path / "resumed"
    _relaunch_from(straight, run, 1)
    proc = launch(run, _overrides(moved / "images", moved / "proposals.safetensors", "train.log_every=2",
                                  "train.checkpoint_every=5", "train.keep_last=4"))
    ok(proc)
    for line in (f"dataset.source: '{images}' -> '{moved / 'images'}'", "train.log_every: 1 -> 2",
                 "train.checkpoint_every: 1 -> 5", "train.keep_last: 20 -> 4"):
        assert f"resuming with a changed setting that does not change the result: {line}" in proc.stdout
    a, b = (load_file(str(d / "checkpoints" / "step_00000002" / "model.safetensors")) for d in (straight, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # a key that defines the run: refused, naming it with both values
    refused = tmp_path / "refused"
    _relaunch_from(straight, refused, 1)
    proc = launch(refused, _overrides(images, proposals, "method.tau=0.3"))
    assert proc.returncode == 1
    assert "in keys that define the run:\n  method.tau: 0.2 -> 0.3" in proc.stderr
    # data with the same names but other image sizes: refused as other data, whatever its path
    other = make_tiny_source(tmp_path / "other", size=(96, 88))
    proc = launch(refused, _overrides(*other))
    assert proc.returncode == 1
    assert "is not the data of the checkpoint" in proc.stderr and "8 images, sha256" in proc.stderr
    assert not (refused / "checkpoints" / "step_00000002").exists()


@pytest.mark.slow
def test_another_number_of_processes_continues_with_the_same_global_batch(tmp_path, make_tiny_source):
    images, proposals = make_tiny_source(tmp_path / "data")
    straight = tmp_path / "straight"
    ok(launch(straight, _overrides(images, proposals), nproc=2))
    run = tmp_path / "resumed"
    _relaunch_from(straight, run, 1)
    proc = launch(run, _overrides(images, proposals), nproc=1)
    ok(proc)
    assert "written by 2 process(es) x 1 accumulated micro-batch(es); continuing with 1 x 2, the same " \
           "global batch of 4" in proc.stdout
    assert f"resumed from {run / 'checkpoints' / 'step_00000001'} at step 1/2" in proc.stdout
    state = json.loads((run / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert (state["global_batch"], state["num_processes"], state["accumulation"]) == (4, 1, 2)
