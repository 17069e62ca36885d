"""Two processes on CPU (gloo) through ``accelerate launch``: the memory bank holds both processes'
keys and the weights stay in sync.

Run by pytest, this file launches itself as the worker: ``accelerate launch --multi_gpu
--num_processes 2 tests/test_engine_distributed.py OUT KEY=VALUE...`` (the recipe overrides).
"""
import sys
from pathlib import Path

import pytest
import torch
from launching import ENV, ROOT, accelerate, capture
from safetensors.torch import load_file, save_file

# BatchNorm running statistics are per process on CPU (SyncBN needs GPUs): they are not trained weights
_PER_PROCESS = ("running_mean", "running_var", "num_batches_tracked")


def worker(out: Path, overrides: list[str]) -> None:
    import torch.nn.functional as F
    from accelerate import PartialState

    from d3ssl_zoo.engine import load_recipe, train
    from d3ssl_zoo.method import RegionQueue
    from d3ssl_zoo.tags import recipes_dir

    torch.set_num_threads(1)
    state = PartialState(cpu=True)  # gloo on CPU, whether or not a GPU is present
    rank = state.process_index
    queue = RegionQueue(size=8, dim=4, seed=0)
    queue.enqueue(F.normalize(torch.eye(4)[2 * rank: 2 * rank + 2], dim=1))  # rank 0: e0, e1; rank 1: e2, e3
    recipe = load_recipe(recipes_dir() / "demo.yaml", overrides)
    result = train(recipe, out / "run")
    weights = {k: v.contiguous() for k, v in result.method.state_dict().items() if not k.endswith(_PER_PROCESS)}
    save_file({**weights, "unit_queue.keys": queue.keys, "unit_queue.ptr": queue.ptr},
              str(out / f"rank{rank}.safetensors"))


@pytest.mark.slow
def test_two_processes_share_queue_and_weights(tmp_path, make_tiny_source, tiny_overrides):
    images, proposals = make_tiny_source(tmp_path / "data")
    cmd = accelerate(2, Path(__file__), str(tmp_path), *tiny_overrides(images, proposals))
    proc = capture(cmd, timeout=300, env={**ENV, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    # the queue gathers keys from all processes before enqueueing: both ranks hold e0..e3 in rank order
    for r in (r0, r1):
        assert torch.allclose(r["unit_queue.keys"][:4], torch.eye(4)) and int(r["unit_queue.ptr"]) == 4
    # the engine run: 8 images / (2 processes x batch 2) = 2 steps, 2 views x 2 images x 2 boxes per process
    assert int(r0["queue.ptr"]) == int(r1["queue.ptr"]) == 2 * 2 * (2 * 2 * 2)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between the two processes"
    # both processes' (different) images went into the queue: the newest 16 rows are not all one rank's
    new = r0["queue.keys"][16:32]
    assert not torch.allclose(new[:8], new[8:])


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2:])
