"""No work lost, no silent nonsense in pre-training and detection fine-tuning, through the user's path.

An unwritable destination is refused before any work with its path and the reason, and one that stops
taking writes mid-run is reported with what is intact; one run at a time writes to a run folder (a lock,
taken over from a killed run); Ctrl-C says where the last checkpoint is and exits 130; recipe values that
would train nonsense are refused by key and value; a plain pickle in a checkpoint is refused as unsafe.
"""
import errno
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import launching
import pytest
import torch
import yaml
from accelerate import Accelerator
from launching import ENV
from torch import nn

from d3ssl_zoo.checkpoint import (
    LOCK_FILE,
    RunLockedError,
    UnsafeCheckpointError,
    list_checkpoints,
    lock_run_folder,
    resolve_resume,
    save_checkpoint,
)
from d3ssl_zoo.cli import main as zoo_main
from d3ssl_zoo.disk import UnwritableError

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "train" / "pretrain.py"
FINETUNE = ROOT / "train" / "finetune_det.py"
_spec = importlib.util.spec_from_file_location("pretrain", PRETRAIN)  # a script, not a module
pretrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_source, tiny_overrides):
    """The demo recipe shrunk to a tiny source of 8 images: 4 steps per epoch, a checkpoint every step."""
    return tiny_overrides(*make_tiny_source(tmp_path_factory.mktemp("tiny")))


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended early (rc {proc.returncode}): {proc.communicate()}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


# --- recipe values that train nonsense ------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("optim.base_lr=0", "optim.base_lr must be a finite number > 0 .* got 0.0"),
    ("optim.base_lr=-1", "optim.base_lr must be a finite number > 0 .* got -1.0"),
    ("optim.base_lr=nan", "optim.base_lr must be a finite number > 0 .* got nan"),
    ("train.batch_size=0", r"train.batch_size must be >= 1 \(images per micro-batch on each process\), got 0"),
    ("train.seed=-1", r"train.seed must be an integer from 0 to 2\*\*32 - 1, got -1"),
])
def test_nonsense_recipe_values_are_refused_at_load_by_key(override, message, capsys):
    assert pretrain.main(["--print-recipe", override]) == 2  # refused when the recipe is read, before any work
    err = capsys.readouterr().err
    assert err.startswith("pretrain.py: ") and "bn_groups" not in err
    assert __import__("re").search(message, err), err


# --- a plain pickle in a checkpoint ---------------------------------------------------------------------------------

class _Marker:  # unpickling it creates the marker file: stands for any code a crafted pickle could run
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_a_plain_pickle_in_a_checkpoint_is_refused_as_unsafe_not_as_damaged(tmp_path, protocol):
    run = tmp_path / "run"
    for step in (1, 2):
        ckpt = run / "checkpoints" / f"step_{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
        (ckpt / "recipe.yaml").write_text(yaml.safe_dump({"lr": 0.1}))
        torch.save({"state": {}, "param_groups": []}, ckpt / "optimizer.bin")
    crafted = run / "checkpoints" / "step_00000002" / "optimizer.bin"
    crafted.write_bytes(pickle.dumps({"state": _Marker(tmp_path / "marker")}, protocol=protocol))
    for attempt in (lambda: resolve_resume("auto", run), lambda: resolve_resume(str(crafted.parent), run)):
        with pytest.raises(UnsafeCheckpointError, match=f"{crafted} is a plain pickle .*imports (builtins|io).open.*"
                                                        f"could run code"):
            attempt()
    assert not (tmp_path / "marker").exists()


# --- unwritable destinations ----------------------------------------------------------------------------------------

def _unwritable(tmp_path: Path, kind: str) -> Path:
    if kind == "file in the way":
        (tmp_path / "a_file").write_text("")
        return tmp_path / "a_file" / "run"
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["none", "tensorboard"])
@pytest.mark.parametrize("kind", ["file in the way", "read-only folder"])
def test_pretraining_into_an_unwritable_folder_is_refused_before_any_work(tiny, tmp_path, kind, tracker):
    out = _unwritable(tmp_path, kind)
    proc = subprocess.run([sys.executable, str(PRETRAIN), "--no-eval", "--output-dir", str(out), *tiny,
                           f"train.tracker={tracker}"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "global batch" not in proc.stdout  # nothing was built or trained
    assert f"pretrain.py: cannot write {out} (" in proc.stderr
    assert "nothing was started. Give --output-dir a folder you can write to" in proc.stderr


def test_a_folder_that_stops_taking_writes_mid_run_is_reported_with_what_is_intact(tmp_path, monkeypatch):
    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    first = save_checkpoint(acc, tmp_path / "run", {"step": 1}, {"lr": 0.1}, keep_last=3)

    def read_only(folder):
        raise OSError(errno.EROFS, "Read-only file system", str(folder))

    monkeypatch.setattr(acc, "save_state", read_only)
    with pytest.raises(UnwritableError) as e:
        save_checkpoint(acc, tmp_path / "run", {"step": 2}, {"lr": 0.1}, keep_last=3)
    assert str(e.value).startswith(f"cannot write {tmp_path / 'run' / 'checkpoints' / 'step_00000002'} "
                                   f"(read-only file system")
    assert f"the checkpoints written before are intact (newest: {first})" in str(e.value)
    assert f"Make {tmp_path / 'run'} writable again and run the same command again: it resumes" in str(e.value)
    assert list_checkpoints(tmp_path / "run") == [first]


@pytest.mark.parametrize("kind", ["file in the way", "read-only folder"])
def test_eval_out_unwritable_is_refused_before_any_work(tmp_path, kind, capsys, monkeypatch):
    out = _unwritable(tmp_path, kind)
    from d3ssl_zoo.evaluation import features

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(features, "load_model", no_model)
    assert zoo_main(["eval", "oknn", "--model", "d3ssl_r18c4", "--sample", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"d3ssl-zoo eval oknn: cannot write {out} (" in err
    assert "nothing was started. Give --out a folder you can write to" in err


@pytest.mark.slow
def test_finetune_det_output_dir_unwritable_or_locked_is_refused_before_the_data_is_read(tmp_path):
    out = _unwritable(tmp_path, "file in the way")
    cmd = [sys.executable, str(FINETUNE), "--task", "voc", "--model", "d3ssl_r18c4", "--data",
           str(tmp_path / "no_data")]
    proc = subprocess.run([*cmd, "--output-dir", str(out)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"finetune_det: cannot write {out} (" in proc.stderr and "Give --output-dir a folder" in proc.stderr
    (tmp_path / "run").mkdir()
    lock = lock_run_folder(tmp_path / "run")  # this test process holds the folder
    try:
        proc = subprocess.run([*cmd, "--output-dir", str(tmp_path / "run")], env=ENV, capture_output=True, text=True,
                              timeout=300)
    finally:
        lock.release()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"finetune_det: another run is writing to {tmp_path / 'run'} (process {os.getpid()} on " in proc.stderr
    assert not (tmp_path / "run" / LOCK_FILE).exists()


# --- one run per folder ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_launch_into_a_running_folder_is_refused_and_ctrl_c_says_how_to_resume(tiny, tmp_path):
    out = tmp_path / "run"
    long = [*tiny, "train.epochs=100"]  # 400 steps: still running while the second launch starts
    first = subprocess.Popen(launching.pretrain(out, long), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)  # its own process group, as in a terminal
    try:
        wait_for(lambda: list_checkpoints(out), first)
        holder = json.loads((out / LOCK_FILE).read_text())["pid"]
        second = subprocess.run(launching.pretrain(out, long), env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        assert f"pretrain.py: another run is writing to {out} (process {holder} on " in second.stderr
        assert first.poll() is None  # the running one goes on
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in the terminal: the launcher and the run get it
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    newest = list_checkpoints(out)[-1]
    step = int(newest.name.split("_")[1])
    assert (f"pretrain.py: interrupted; the last checkpoint is {newest} (step {step}): the same command continues "
            f"from it") in stderr
    assert not (out / LOCK_FILE).exists()  # released on the way out
    again = subprocess.Popen(launching.pretrain(out, long), env={**ENV, "PYTHONUNBUFFERED": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = again.stdout.readline()
        while line and "resumed from" not in line:
            line = again.stdout.readline()
        os.killpg(again.pid, signal.SIGINT)
        again.communicate(timeout=120)
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)
            again.wait()
    assert line.strip() == f"resumed from {newest} at step {step}/400"
    assert again.returncode == 130


@pytest.mark.slow
def test_the_lock_left_by_a_killed_run_is_taken_over_with_a_warning(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", "import os, sys; from d3ssl_zoo.checkpoint import "
                               "lock_run_folder; lock_run_folder(sys.argv[1]); os.kill(os.getpid(), 9)", str(run)],
                              env=ENV)
    assert killed.wait(timeout=120) == -9
    left = json.loads((run / LOCK_FILE).read_text())  # the file stays; its flock went with the process
    assert left["pid"] == killed.pid
    taker = subprocess.run([sys.executable, "-c", "import sys; from d3ssl_zoo.checkpoint import lock_run_folder; "
                            "lock = lock_run_folder(sys.argv[1]); print('held'); lock.release()", str(run)],
                           env=ENV, capture_output=True, text=True, timeout=120)
    assert taker.returncode == 0 and "held" in taker.stdout, taker.stderr
    assert (f"{run / LOCK_FILE} was left by process {left['pid']} on {left['host']}" in taker.stderr
            and "ended without releasing it (a killed run); taking it over" in taker.stderr)
    assert not (run / LOCK_FILE).exists()


def test_a_held_lock_refuses_a_second_holder_with_its_pid(tmp_path):
    lock = lock_run_folder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"another run is writing to {tmp_path} \\(process {os.getpid()} on "):
            lock_run_folder(tmp_path)
    finally:
        lock.release()
    lock_run_folder(tmp_path).release()  # free again once released
