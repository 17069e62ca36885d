"""Start-up and in-loop checks of the pre-training loop: the data workers' shared memory against /dev/shm, and the
time spent waiting for batches (is the run data-bound?)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from launching import PRETRAIN, capture, pretrain

from d3ssl_zoo.data import PretrainCollator, build_pretrain_dataset
from d3ssl_zoo.engine import load_recipe
from d3ssl_zoo.engine.trainer import check_shared_memory, sample_bytes
from d3ssl_zoo.tags import recipe_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_source, tiny_overrides):
    return tiny_overrides(*make_tiny_source(tmp_path_factory.mktemp("loop_checks")))


def _launch(out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    return capture(pretrain(out, overrides))


@pytest.mark.parametrize("views", [["data.views=d3ssl"], ["data.views=d3ssl", "data.depositioning=false"],
                                   ["data.views=soco", "data.depositioning=false", "method.name=soco"]])
def test_sample_bytes_are_what_the_collator_ships(tiny, views):
    recipe = load_recipe(recipe_file("demo"), [*tiny, "data.num_proposals=3", *views])
    dataset = build_pretrain_dataset(recipe.data, recipe.dataset.source, recipe.dataset.proposals)
    batch = PretrainCollator(recipe.data)([dataset[(0, i)] for i in range(3)])
    shipped = sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))
    assert sample_bytes(recipe.data) * 3 == shipped


def test_shared_memory_need_is_checked_only_with_workers_and_a_dev_shm(tiny, tmp_path):
    cfg = load_recipe(recipe_file("demo"), tiny).data
    free = shutil.disk_usage(tmp_path).free
    batches = free // sample_bytes(cfg) // 2 + 1  # 2 workers x 2 prefetched batches of this many images: too much
    with pytest.raises(ValueError) as e:
        check_shared_memory(cfg, batches, 2, 1, 1, shm=tmp_path)
    assert "x train.num_workers=2 x 1 prefetched batches x " in str(e.value)
    assert f"but {tmp_path} has " in str(e.value) and "--shm-size=" in str(e.value)
    check_shared_memory(cfg, batches, 0, 0, 1, shm=tmp_path)  # no workers: the main process makes the batches
    check_shared_memory(cfg, batches, 2, 1, 1, shm=tmp_path / "absent")
    check_shared_memory(cfg, 2, 2, 2, 1, shm=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this system")
def test_a_run_whose_workers_would_overflow_dev_shm_is_refused_at_start_up(tiny, tmp_path):
    free = shutil.disk_usage("/dev/shm").free
    side = 4096
    per_image = 8 * side * side  # x1, x2, m, m_hat at image_size, x2-s at half of it: about 8 bytes per pixel
    batch = free // (per_image * 2 * 2) + 1
    proc = _launch(tmp_path / "run", [*tiny, f"data.image_size={side}", f"data.small_size={side // 2}",
                                      "train.num_workers=2", f"train.batch_size={batch}"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f'File "{PRETRAIN}"' not in proc.stderr, proc.stderr[-3000:]  # only the launcher's CalledProcessError
    found = re.search(r"pretrain\.py: the data loader needs ([\d.]+) GiB of shared memory \(1 process\(es\) on this "
                      r"machine x train.num_workers=2 x 2 prefetched batches x .* but /dev/shm has .* free\. Give the "
                      r"container more \(docker run --shm-size=\d+g; .*\), or lower train.num_workers or "
                      r"train.batch_size", proc.stderr)
    assert found, proc.stderr[-3000:]
    assert float(found[1]) * 2 ** 30 > free
    assert not list((tmp_path / "run" / "checkpoints").glob("step_*"))


@pytest.mark.slow
def test_the_wait_for_batches_is_logged_and_the_first_log_lines_say_if_the_run_is_data_bound(tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    proc = _launch(out, [*tiny, "train.epochs=2", "train.tracker=tensorboard", "train.log_every=2",
                        "train.checkpoint_every=100"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdicts = re.findall(r"^step (\d+): waiting for batches took (\d+)% of the step time \(\d+ ms per step, "
                          r"logged as data_wait\): (the run is data-bound\. Raise train\.num_workers \(now 0\)|"
                          r"not data-bound)", proc.stdout, re.M)
    assert len(verdicts) == 1, proc.stdout[-3000:]  # once, at the first log after the workers' start-up
    step, percent, verdict = verdicts[0]
    assert step == "4" and verdict.startswith("the run is data-bound") == (int(percent) > 20)
    events = [EventAccumulator(str(p.parent)).Reload() for p in (out / "logs").rglob("events.out.tfevents.*")]
    waits = [e for acc in events if "data_wait" in acc.Tags()["scalars"] for e in acc.Scalars("data_wait")]
    assert [e.step for e in waits] == [2, 4, 6, 8] and all(0 < e.value < 1 for e in waits)
