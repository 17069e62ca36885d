"""Running the user's entry points in real processes, as the slow tests do: ``accelerate launch`` with one
thread per process, the Hub offline and no GPU, and reading back every tensor a checkpoint holds."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "train" / "pretrain.py"
# two processes of two threads each on a 2-core machine slow down 10-40x: one thread per process
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate(nproc: int, script: Path, *args: str) -> list[str]:
    """``accelerate launch`` of ``script`` on ``nproc`` CPU processes (gloo, ``--multi_gpu``, a free port when
    there are several: ``--cpu`` would silently start one)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    if nproc > 1:
        cmd += ["--multi_gpu", "--main_process_port", str(free_port())]
    return [*cmd, str(script), *args]


def pretrain(out: Path, overrides: list[str], nproc: int = 1) -> list[str]:
    """The user's pre-training command into ``out``, without the end-of-run evaluation."""
    return accelerate(nproc, PRETRAIN, "--no-eval", "--output-dir", str(out), *overrides)


def small_run(images: Path, proposals: Path, *extra: str) -> list[str]:
    """Overrides of the demo recipe for a run of seconds on 8 tiny images: global batch 4 in micro-batches of 2
    (one process accumulates 2 micro-batches per step, two take one each), 2 steps per epoch, 3 epochs, a
    checkpoint after every step; ``extra`` last (a later key wins)."""
    return [f"dataset.source={images}", f"dataset.proposals={proposals}", "data.image_size=64",
            "data.small_size=32", "data.num_proposals=2", "method.roi_size=4", "method.roi_size_small=2",
            "method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32",
            "method.queue_size=48", "train.global_batch=4", "train.batch_size=2", "train.epochs=3",
            "train.num_workers=0", "train.tracker=none", "train.checkpoint_every=1", "train.log_every=1",
            "train.keep_last=20", "optim.warmup_epochs=0.5", "optim.base_lr=4.0", *extra]


def capture(cmd: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end with ``ENV`` (or ``env=``), capturing its output as text."""
    return subprocess.run(cmd, env=kwargs.pop("env", ENV), capture_output=True, text=True, timeout=timeout, **kwargs)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def checkpoint_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint: the method module (student, teacher, queue) and the optimiser's state."""
    state = {f"model.{k}": v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    optim = torch.load(ckpt / "optimizer.bin", weights_only=True, map_location="cpu")
    state.update({f"optim.{i}.{k}": v for i, s in optim["state"].items() for k, v in s.items()})
    return state
