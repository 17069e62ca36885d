"""Exact resume, failure handling and the global batch through the user's path: ``accelerate launch train/pretrain.py``
in real processes.

A run relaunched from a copy of one of its checkpoints (what a kill leaves behind) must end
bit-identical to the uninterrupted run, whether the checkpoint lies inside epoch 0, on an epoch
boundary or later, on one process and on two (gloo on CPU). One failing process must end the whole
job promptly with its error visible, not leave the others waiting in a collective.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from launching import capture, checkpoint_state, ok, pretrain, small_run
from safetensors.torch import load_file

from d3ssl_zoo.tags import recipes_dir

RECIPES = recipes_dir()


def launch(out: Path, overrides: list[str], nproc: int, timeout: float = 600) -> subprocess.CompletedProcess:
    return capture(pretrain(out, overrides, nproc), timeout=timeout)


def _differing(a: Path, b: Path) -> list[str]:
    sa, sb = checkpoint_state(a), checkpoint_state(b)
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


@pytest.fixture(scope="module")
def source(tmp_path_factory, make_tiny_source):
    return make_tiny_source(tmp_path_factory.mktemp("resume_data"))


@pytest.mark.parametrize("nproc, resume_steps", [(1, (1, 2, 5)), (2, (1, 4))],
                         ids=["1-process", "2-processes"])
@pytest.mark.slow
def test_relaunch_from_a_checkpoint_equals_the_uninterrupted_run(source, tmp_path, nproc, resume_steps):
    # resume points: inside epoch 0, on the boundary of epochs 0/1, inside a later epoch
    overrides = small_run(*source)
    straight = tmp_path / "straight"
    ok(launch(straight, overrides, nproc))
    steps_per_epoch = 2
    final = straight / "checkpoints" / f"step_{3 * steps_per_epoch:08d}"
    assert final.is_dir()
    for k in resume_steps:
        run = tmp_path / f"from_{k}"
        src = straight / "checkpoints" / f"step_{k:08d}"
        shutil.copytree(src, run / "checkpoints" / src.name)
        proc = launch(run, overrides, nproc)  # --resume auto is the default
        ok(proc)
        assert f"resumed from {run / 'checkpoints' / src.name} at step {k}/" in proc.stdout
        for later in range(k + 1, 3 * steps_per_epoch + 1):
            name = f"step_{later:08d}"
            diff = _differing(straight / "checkpoints" / name, run / "checkpoints" / name)
            assert not diff, f"resumed from step {k}: {len(diff)} tensors differ at {name}, e.g. {diff[:3]}"
        exported = [load_file(str(d / "export" / "model.safetensors")) for d in (straight, run)]
        assert all(torch.equal(v, exported[1][k2]) for k2, v in exported[0].items())
        shutil.rmtree(run)
    # every micro-batch's keys went into the queue: steps x accumulation x 2 views x 2 images x K=2,
    # on each process, gathered from all processes
    queue = load_file(str(final / "model.safetensors"))
    assert int(queue["queue.num_enqueued"]) == 6 * 2 * 2 * 2 * 2
    state = json.loads((final / "trainer_state.json").read_text())
    assert (state["global_batch"], state["num_processes"], state["accumulation"]) == (4, nproc, 2 // nproc)


@pytest.mark.slow
def test_a_failing_process_ends_the_job_promptly_with_its_error(tmp_path, make_tiny_source):
    # one image is unreadable: only the process whose shard holds it fails; the launcher must return
    # non-zero with the error, not wait for the collective timeout (30 min with gloo)
    images, proposals = make_tiny_source(tmp_path / "data")
    (images / "img5.png").write_bytes(b"not a png")
    proc = launch(tmp_path / "run", small_run(images, proposals), 2, timeout=240)
    assert proc.returncode != 0
    assert "img5.png" in proc.stderr


# --- the global batch -----------------------------------------------------------------------------------------------

def test_accumulation_reaches_the_recipes_global_batch_or_names_the_fix():
    from d3ssl_zoo.engine import accumulation_steps

    assert accumulation_steps(1024, 128, 8) == 1  # SoCo's 8 GPUs
    assert accumulation_steps(1024, 128, 1) == 8
    assert accumulation_steps(1024, 64, 4) == 4
    assert accumulation_steps(None, 32, 2) == 1  # no global batch stated: batch_size x processes
    with pytest.raises(ValueError, match=r"train.global_batch=1024 .* 16 process\(es\) .* multiple of 2048\. "
                                         r"Set train.batch_size=64"):
        accumulation_steps(1024, 128, 16)
    with pytest.raises(ValueError, match=r"multiple of 64\. Set train.batch_size=16 "):
        accumulation_steps(32, 32, 2)  # the demo on two processes
    with pytest.raises(ValueError, match="Launch on a number of processes that divides it, or override "
                                         "train.global_batch"):
        accumulation_steps(1024, 128, 3)


@pytest.mark.slow
def test_accumulated_steps_update_once_per_global_batch(source, tmp_path, monkeypatch):
    from d3ssl_zoo.engine import load_recipe, train
    from d3ssl_zoo.method import D3SSL, LARS

    counts = {"forward": 0, "step": 0, "ema": 0}
    for cls, name, key in ((D3SSL, "forward", "forward"), (LARS, "step", "step"), (D3SSL, "momentum_update", "ema")):
        real = getattr(cls, name)

        def counted(self, *a, _real=real, _key=key, **k):
            counts[_key] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(cls, name, counted)
    recipe = load_recipe(RECIPES / "demo.yaml", small_run(*source, "train.epochs=2", "train.checkpoint_every=100"))
    result = train(recipe, tmp_path / "run")
    # 8 images / global batch 4 = 2 steps per epoch; each step = 2 micro-batches of 2 on this one process
    assert (result.step, result.total_steps) == (4, 4)
    assert counts == {"forward": 8, "step": 4, "ema": 4}
    assert int(result.method.queue.num_enqueued) == 8 * 2 * 2 * 2  # every micro-batch's keys
    state = json.loads((result.last_checkpoint / "trainer_state.json").read_text())
    assert (state["global_batch"], state["accumulation"], state["steps_per_epoch"]) == (4, 2, 2)


@pytest.mark.slow
def test_teacher_ema_skips_the_steps_the_fp16_scaler_skipped(source, tmp_path, monkeypatch):
    # fp16 needs a GPU: the scaler's verdict is simulated; a skipped step leaves the teacher untouched
    from accelerate import Accelerator

    from d3ssl_zoo.engine import load_recipe, train
    from d3ssl_zoo.method import D3SSL

    verdicts = iter([False, True, False, True])
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: next(verdicts)))
    emas = []
    real = D3SSL.momentum_update
    monkeypatch.setattr(D3SSL, "momentum_update", lambda self, m: (emas.append(m), real(self, m)))
    recipe = load_recipe(RECIPES / "demo.yaml", small_run(*source, "train.epochs=2", "train.checkpoint_every=100"))
    assert train(recipe, tmp_path / "run").step == 4
    assert len(emas) == 2  # steps 0 and 2 only
