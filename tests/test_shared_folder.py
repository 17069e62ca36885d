"""Several nodes: the output folder must be one folder that every process sees.

Two "nodes" on one machine: two ``torchrun`` launches of one process each (``--nnodes 2``, gloo on CPU),
each started in its own working directory with the same relative ``--output-dir``. In different
directories each node resolves it to its own real folder, as with a node-local disk: the run must stop at
start-up on both nodes, naming the folder. In one directory the folder is shared: every process's RNG
state lands in the checkpoint and no temporary folder is left behind.
"""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from launching import ENV, PRETRAIN, free_port


def _launch_two_nodes(cwds: tuple[Path, Path], overrides: list[str]) -> list[subprocess.CompletedProcess]:
    port = free_port()
    procs = []
    for rank, cwd in enumerate(cwds):
        cwd.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
               str(PRETRAIN), "--no-eval", "--output-dir", "run", *overrides]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


@pytest.mark.slow
def test_an_output_dir_each_node_sees_differently_stops_every_rank_at_start(tmp_path, make_tiny_source,
                                                                             tiny_overrides):
    images, proposals = make_tiny_source(tmp_path / "data")
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    procs = _launch_two_nodes((node0, node1), tiny_overrides(images, proposals))
    for p in procs:
        assert p.returncode != 0, p.stdout[-2000:] + p.stderr[-3000:]
        assert f"--output-dir run is not one folder shared by every process of this run: the main process " \
               f"wrote run/.shared-folder-check, and process 1 on {socket.gethostname()} (it resolves " \
               f"--output-dir to {node1 / 'run'}) did not find it there" in p.stderr, p.stderr[-3000:]
        assert "a filesystem all nodes mount" in p.stderr
    # stopped before any work: no checkpoint folder (and no leftover temporary one) on either node
    assert not (node0 / "run" / "checkpoints").exists() and not (node1 / "run" / "checkpoints").exists()
    assert not (node0 / "run" / ".shared-folder-check").exists()


@pytest.mark.slow
def test_every_ranks_rng_state_lands_in_the_shared_checkpoint(tmp_path, make_tiny_source, tiny_overrides):
    images, proposals = make_tiny_source(tmp_path / "data")
    shared = tmp_path / "shared"
    procs = _launch_two_nodes((shared, shared), tiny_overrides(images, proposals))
    for p in procs:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    checkpoints = shared / "run" / "checkpoints"
    # 8 images / (2 processes x 2): 2 steps, a checkpoint after each (keep_last=2)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000001", "step_00000002"]
    for ckpt in checkpoints.iterdir():
        files = json.loads((ckpt / "files.json").read_text())
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= files.keys()
    assert not list((shared / "run").glob(".shared-folder-check"))
