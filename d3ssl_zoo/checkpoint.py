"""Atomic, verified, resumable checkpoints of everything a run needs (pre-training and detection).

A checkpoint is ``<output_dir>/checkpoints/step_XXXXXXXX/`` holding Accelerate's ``save_state``
(model weights as safetensors, optimiser, AMP scaler and the RNG states of every process),
``trainer_state.json`` (step and position in the data, given by the training loop), the run's
``recipe.yaml`` and ``files.json`` (name and size of every file Accelerate wrote). Schedules are
pure functions of the step, so restoring the step restores them.

Atomic: a checkpoint is written into a hidden temporary folder and renamed once complete; a run
killed (or out of disk) while saving leaves the previous checkpoints intact, and only folders with
``trainer_state.json`` count as checkpoints.

Safe to load: Accelerate unpickles ``custom_checkpoint_*.pkl`` (objects given to
``register_for_checkpointing``) with ``weights_only=False``, so a crafted one runs code: we never
write such files and refuse a folder holding one. Every other pickle (optimiser, scaler, RNG
states) is first opened here with ``weights_only=True`` and Accelerate's own allow-list, and one
that needs anything more is refused by name before Accelerate reads the folder.

Verified before resuming: the files of ``files.json`` present with their sizes, safetensors
headers and pickles readable. ``resolve_resume('auto')`` skips a damaged checkpoint with a
warning naming it and resumes from the newest intact one.

One run per folder: :func:`claim_run_folder` checks that the folder can be written and locks it
(``run.lock``, an exclusive ``flock`` held by the main process for the run's life and released on
exit, by the kernel too when the process is killed), before anything is read or written. A second
run into the folder is refused with the holder's process id; the lock file a killed run leaves
behind is taken over with a warning.

One folder for every process: :func:`check_shared_folder` checks at start-up that every process (on every
node) sees the folder the main process writes to, since each process writes its RNG state into the
checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import pickle
import pickletools
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError, safe_open

from d3ssl_zoo.disk import DiskFullError, check_writable, is_disk_full, is_unwritable, unwritable

__all__ = ["STATE_FILE", "RECIPE_FILE", "FILES_FILE", "LOCK_FILE", "CheckpointError", "DamagedCheckpointError",
           "decide_on_main", "UnsafeCheckpointError", "RunLockedError", "RunLock", "lock_run_folder",
           "claim_run_folder", "checkpoint_dir", "list_checkpoints", "verify_checkpoint", "resolve_resume",
           "check_output_dir", "save_checkpoint", "load_checkpoint", "interrupted_message",
           "PREEMPTED_EXIT", "PREEMPTION_SIGNALS", "WorkersIgnorePreemption", "preemption_requested",
           "stop_on_first_signal", "SharedFolderError", "MARKER_FILE", "check_shared_folder"]

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
RECIPE_FILE = "recipe.yaml"
FILES_FILE = "files.json"
LOCK_FILE = "run.lock"
_PREFIX = "step_"
_PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")   # what Accelerate reads with torch.load
_CUSTOM_STATE = re.compile(r"^custom_checkpoint_\d+\.pkl$")
_MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
_ZIP_MAGIC = b"PK\x03\x04"  # how torch.save's zip format starts


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (bad input: the command-line tools report it as such)."""


class DamagedCheckpointError(CheckpointError):
    """A file of the checkpoint is missing, truncated or unreadable."""


class UnsafeCheckpointError(CheckpointError):
    """A file of the checkpoint holds objects whose loading could run code."""


class RunLockedError(RuntimeError):
    """Another run holds the lock of the run folder."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{_PREFIX}{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(_PREFIX):]))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedCheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedCheckpointError(f"{path} is unreadable ({e})") from None


def _check_safetensors(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt"):  # the header must parse and cover the whole file
            pass
    except (SafetensorError, OSError) as e:
        raise DamagedCheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def _plain_pickle_imports(path: Path) -> list[str] | None:
    """``None`` unless ``path`` is a plain pickle (not torch.save's zip); then the ``module.name`` of every object
    it would import, read from its opcodes without unpickling anything."""
    try:
        with open(path, "rb") as f:
            if f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
                return None
            f.seek(0)
            data = f.read()
    except OSError:
        return None  # unreadable: reported as damaged by the load that follows
    is_pickle = data[:1] == pickle.PROTO  # protocol 2 and later; older ones are known by their STOP
    imports, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                imports.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                imports.append(".".join(strings[-2:]))
            elif op.name == "STOP":
                is_pickle = True
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not (or no longer) a valid pickle from here on
        pass
    return sorted(set(imports)) if is_pickle else None


def _check_pickle(path: Path) -> None:
    """Open a ``torch.save`` file as Accelerate will, but memory-mapped: the pickle runs, the tensors are not read."""
    imports = _plain_pickle_imports(path)
    if imports is not None:
        named = f" (it imports {', '.join(imports)})" if imports else ""
        raise UnsafeCheckpointError(
            f"{path} is a plain pickle{named}, not the zip format of torch.save that Accelerate writes; unpickling "
            f"it could run code, so the checkpoint {path.parent} is refused. Resume from a checkpoint this "
            f"package wrote")
    try:
        accelerate_load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        reason = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), str(e).splitlines()[0])
        raise UnsafeCheckpointError(
            f"{path} holds more than tensors and plain containers ({reason}); loading it could run code, so the "
            f"checkpoint {path.parent} is refused. Resume from a checkpoint this package wrote") from None
    except Exception as e:  # any other failure to read it (truncated zip, not a torch file, I/O error)
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DamagedCheckpointError(f"{path} cannot be read ({first_line})") from None


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check that ``path`` is an intact checkpoint that loads without running code; return its trainer state.

    Raises :class:`UnsafeCheckpointError` or :class:`DamagedCheckpointError` naming the file.
    """
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file())
    for f in files:
        if _CUSTOM_STATE.match(f.name):
            raise UnsafeCheckpointError(
                f"{f}: Accelerate unpickles custom_checkpoint files with weights_only=False, so loading it could "
                f"run code; checkpoints of this package never hold one (their state is in {STATE_FILE}). "
                f"Refusing {path}: resume from a checkpoint this package wrote")
    state = _read_json(path / STATE_FILE)
    try:
        yaml.safe_load((path / RECIPE_FILE).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DamagedCheckpointError(f"{path / RECIPE_FILE} is missing or unreadable ({e})") from None
    for f in files:  # contents first: a crafted file is refused as such, whatever its size
        if f.suffix == ".safetensors":
            _check_safetensors(f)
        elif f.suffix in _PICKLE_SUFFIXES:
            _check_pickle(f)
    if (path / FILES_FILE).is_file():
        for name, size in _read_json(path / FILES_FILE).items():
            f = path / name
            if not f.is_file():
                raise DamagedCheckpointError(f"{f} is missing (the checkpoint was written with it)")
            if f.stat().st_size != size:
                raise DamagedCheckpointError(f"{f} has {f.stat().st_size} bytes, {size} were written (truncated)")
    else:  # written before files.json existed: at least weights and optimiser
        if not any((path / name).is_file() for name in _MODEL_FILES):
            raise DamagedCheckpointError(f"{path} holds no model weights ({' or '.join(_MODEL_FILES)})")
        if not (path / "optimizer.bin").is_file():
            raise DamagedCheckpointError(f"{path / 'optimizer.bin'} is missing")
    return state


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``None`` -> start fresh; ``'auto'`` -> the newest intact checkpoint of ``output_dir`` or fresh if it has
    none; a path -> that checkpoint. Checkpoints are verified (:func:`verify_checkpoint`): with ``'auto'`` a
    damaged one is skipped with a warning naming it; a given path that is damaged, a file that could run code,
    or only damaged checkpoints in ``output_dir`` raise a :class:`CheckpointError`."""
    if resume is None:
        return None
    if resume == "auto":
        damaged = []
        for ckpt in reversed(list_checkpoints(output_dir)):
            try:
                verify_checkpoint(ckpt)
            except DamagedCheckpointError as e:
                logger.warning("checkpoint %s is damaged and skipped: %s", ckpt, e)
                damaged.append(str(e))
                continue
            if damaged:
                logger.warning("resuming from %s, the newest intact checkpoint", ckpt)
            return ckpt
        if damaged:
            raise DamagedCheckpointError(
                f"every checkpoint under {Path(output_dir) / 'checkpoints'} is damaged:\n  " + "\n  ".join(damaged)
                + "\nmove them away to start over, or choose another --output-dir")
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE}); give a "
            f"<output_dir>/checkpoints/step_* folder or --resume auto")
    try:
        verify_checkpoint(path)
    except DamagedCheckpointError as e:
        raise DamagedCheckpointError(f"{e}; --resume auto takes the newest intact checkpoint") from None
    return path


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [(prefix.rstrip("."), a, b)]
    return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]


def _replace_keys(saved: dict, replaced: Mapping[str, Mapping[Any, tuple[str, Any]]]) -> dict:
    """``saved`` (a nested recipe dict) with each replaced key whose value has an equivalent written as that
    equivalent: ``replaced[old_key][old_value] = (new_key, new_value)``, dotted keys. Other values stay, so a
    setting with no equivalent is still named as a difference."""
    out = copy.deepcopy(saved)
    for old_key, values in replaced.items():
        *path, leaf = old_key.split(".")
        node = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node or node[leaf] not in values:
            continue
        new_key, new_value = values[node.pop(leaf)]
        *new_path, new_leaf = new_key.split(".")
        target = out
        for part in new_path:
            target = target.setdefault(part, {})
        target.setdefault(new_leaf, new_value)
    return out


def check_output_dir(output_dir: str | Path, recipe: dict[str, Any], checkpoint: str | Path | None,
                     may_change: Iterable[str] = (), added: Mapping[str, Any] | None = None,
                     replaced: Mapping[str, Mapping[Any, tuple[str, Any]]] | None = None) -> list[str]:
    """Refuse to mix runs in one output folder; return the allowed changes of a resumed run, one line each.

    A fresh run (``checkpoint`` is ``None``) needs a folder without ``checkpoints/step_*``; a resumed
    one the recipe of its checkpoint, except the keys of ``may_change`` (settings that do not change
    the steps already taken, e.g. the logging period): a change of any other key raises ``ValueError``
    naming each such key with its old and new value. ``added``: dotted keys that recipes gained after
    a checkpoint may have been written, each with the value that behaves as the code did before it; a
    saved recipe without the key counts as having that value. ``replaced``: keys that later recipes express
    by another key, ``{old_key: {old_value: (new_key, new_value)}}``; a saved recipe's old key with such a
    value counts as the new key with the new value.
    """
    if checkpoint is None:
        root = Path(output_dir) / "checkpoints"
        found = sorted(p.name for p in root.glob(f"{_PREFIX}*")) if root.is_dir() else []
        if found:
            raise FileExistsError(f"{output_dir} already holds checkpoints of a run ({found[-1]}); resume it "
                                  f"with --resume auto or choose another --output-dir")
        return []
    saved = _replace_keys(yaml.safe_load((Path(checkpoint) / RECIPE_FILE).read_text()), replaced or {})
    skip = set(may_change)
    added = added or {}
    changes = [(k, a, b) for k, a, b in _differences(saved, recipe)
               if not (a is None and k in added and b == added[k])]
    refused = [f"{k}: {a!r} -> {b!r}" for k, a, b in changes if k not in skip]
    if refused:
        raise ValueError(f"the recipe differs from the one of the checkpoint {checkpoint} in keys that define the "
                         f"run:\n  " + "\n  ".join(refused) + "\nresume with the checkpoint's values of these keys, "
                         f"or start a new run in another --output-dir (a resumed run may change only "
                         f"{', '.join(sorted(skip)) or 'nothing'})")
    return [f"{k}: {a!r} -> {b!r}" for k, a, b in changes]


class SharedFolderError(ValueError):
    """The processes of a run do not all see its output folder as one folder."""


MARKER_FILE = ".shared-folder-check"


def check_shared_folder(accelerator: Accelerator, folder: str | Path, option: str = "--output-dir") -> None:
    """Check that every process sees ``folder`` as the same folder (one shared filesystem across nodes).

    Checkpoints are written by every process into one folder (each its RNG state) and renamed by the main
    process; a folder local to each node would leave each node's files where nothing reads them. The main
    process writes a marker file with a fresh token; after a barrier every process reads it; a process that
    does not see it, or sees another token, fails the check on every process, with the folder, the processes
    and hosts concerned and the fix. Every process must call it; the marker is removed afterwards.
    """
    folder = Path(folder)
    marker = folder / MARKER_FILE

    def write() -> str:
        token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}:{os.urandom(8).hex()}"
        _write_file(marker, token)
        return token

    token = decide_on_main(accelerator, write)  # written before it is broadcast: every process may look now
    try:
        seen = marker.read_text()
    except OSError as e:
        seen = f"<{type(e).__name__}: {e.strerror or e}>"
    here = (accelerator.process_index, socket.gethostname(), str(folder.resolve()), seen == token)
    everyone = gather_object([here])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with contextlib.suppress(OSError):
            marker.unlink()
    blind = [f"process {rank} on {host} (it resolves {option} to {path})" for rank, host, path, ok in everyone
             if not ok]
    if blind:
        raise SharedFolderError(
            f"{option} {folder} is not one folder shared by every process of this run: the main process wrote "
            f"{marker}, and " + "; ".join(blind) + " did not find it there. Checkpoints need every process to "
            f"write into the same folder: on several nodes give {option} a path on a filesystem all nodes mount "
            f"(NFS, Lustre, GPFS...) at the same absolute path, not a node-local disk or a relative path")


def decide_on_main(accelerator: Accelerator, decide: Callable[[], Any]) -> Any:
    """``decide()`` run on the main process only; its result, or its exception, reaches every process.

    Used to pick the checkpoint to resume from: ranks can never resume from different ones, and an
    error on the main process (a damaged or foreign checkpoint) stops every rank instead of leaving
    the others waiting for a broadcast.
    """
    box: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            box[0] = ("ok", decide())
        except Exception as e:  # re-raised on every process below
            box[0] = ("error", e)
    kind, value = broadcast_object_list(box)[0]
    if kind == "error":
        raise value
    return value


class RunLock:
    """The lock of one run folder, held by this process until :meth:`release` (or its exit)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Remove the lock file and unlock it; a second call does nothing."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # a folder that became unwritable keeps the file; the lock still goes
            os.unlink(self.path)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _holder(fd: int) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        if isinstance(holder, dict):
            return holder
    return {}


def lock_run_folder(folder: str | Path, option: str = "--output-dir") -> RunLock:
    """Lock ``folder`` (which must exist) for one run: ``<folder>/run.lock``, an exclusive ``flock`` that records
    this process's id and host.

    The kernel drops the lock when its process ends, however it ends, so a lock file left by a killed run is
    taken over with a warning naming its process. A lock held by a running process raises
    :class:`RunLockedError` with the folder and that process's id (``option``: the command-line option that
    names the folder, for the message).
    """
    path = Path(folder) / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
                   if holder else "another process")
            raise RunLockedError(f"another run is writing to {folder} ({who}; lock file {path}). Wait for it to end, "
                                 f"or give {option} another folder") from None
        except BaseException:
            os.close(fd)
            raise
        # a holder that just released removed the file it locked: only the lock of the file now at `path` counts
        opened = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_ino, current.st_dev) == (opened.st_ino, opened.st_dev):
            break
        os.close(fd)
    previous = _holder(fd)
    if previous:
        logger.warning("%s was left by process %s on %s (since %s), which ended without releasing it (a killed "
                       "run); taking it over", path, previous.get("pid", "?"), previous.get("host", "?"),
                       previous.get("since", "?"))
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    return RunLock(path, fd)


@contextlib.contextmanager
def claim_run_folder(accelerator: Any, folder: str | Path, option: str = "--output-dir",
                     subfolders: Iterable[str] = ()) -> Iterator[None]:
    """The run's hold on ``folder`` while the block runs; every process enters it, collectively.

    The main process alone checks that ``folder`` (and each of ``subfolders`` that exists) can be written
    (:func:`~d3ssl_zoo.disk.check_writable`) and takes its lock (:func:`lock_run_folder`), before anything is
    read or written there; a failure is raised on every process (:func:`decide_on_main`). The lock is released
    when the block ends, by an exception or Ctrl-C too. ``accelerator``: an ``Accelerator`` or ``PartialState``.
    """
    held: list[RunLock] = []

    def claim() -> None:
        check_writable(folder, option)
        for name in subfolders:
            if (Path(folder) / name).is_dir():
                check_writable(Path(folder) / name, option)
        held.append(lock_run_folder(folder, option))

    decide_on_main(accelerator, claim)
    try:
        yield
    finally:
        for lock in held:
            lock.release()


#: Exit status of a run that stopped at a step boundary on SIGTERM or SIGUSR1 after writing a checkpoint
#: (128 + SIGTERM, the status a scheduler expects from a job it asked to stop); relaunching resumes there.
PREEMPTED_EXIT = 128 + signal.SIGTERM
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_preempted: list[int] = []


def preemption_requested() -> int | None:
    """The preemption signal this process received inside ``stop_on_first_signal(preemption=True)``, or ``None``."""
    return _preempted[0] if _preempted else None


class WorkersIgnorePreemption:
    """``worker_init_fn`` wrapper: data workers ignore SIGTERM and SIGUSR1. A scheduler signals every process of
    the job, and PyTorch's workers would die of SIGTERM before the run reaches its step boundary; the main process
    ends its workers itself (and they exit when it dies)."""

    def __init__(self, worker_init_fn: Callable[[int], None] | None) -> None:
        self.worker_init_fn = worker_init_fn

    def __call__(self, worker_id: int) -> None:
        for s in PREEMPTION_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


@contextlib.contextmanager
def stop_on_first_signal(preemption: bool = False) -> Iterator[None]:
    """Inside the block, the first SIGINT or SIGTERM raises ``KeyboardInterrupt(signal number)`` and the ones after
    it are ignored, so the run can say where its last checkpoint is before it exits.

    Ctrl-C in a terminal reaches ``accelerate launch`` as well, which then sends SIGTERM to the run: without
    this, that SIGTERM would kill the run before it speaks. The previous handlers come back when the block ends,
    unless a signal arrived (the process is ending).

    ``preemption=True`` (a loop that checks :func:`preemption_requested` at its step boundaries): SIGTERM and
    SIGUSR1, what cluster schedulers send before they stop a job, only record the signal, so the loop can write
    a checkpoint at the next step boundary and exit; SIGINT (Ctrl-C) still raises at once.
    """
    soft = PREEMPTION_SIGNALS if preemption else ()
    signals = (signal.SIGINT, signal.SIGTERM, *soft[1:])
    previous = {s: signal.getsignal(s) for s in signals}
    received: list[int] = []
    _preempted.clear()

    def interrupt(signum: int, frame: Any) -> None:
        # the handler stays installed and does nothing after the first signal: replacing it by SIG_IGN here
        # would make Python report a second signal already pending as "ignored due to race condition"
        if signum in soft:
            if not _preempted:
                _preempted.append(signum)
        elif not received:
            received.append(signum)
            raise KeyboardInterrupt(signum)

    for s in signals:
        signal.signal(s, interrupt)
    try:
        yield
    finally:
        if not received and not _preempted:
            for s, handler in previous.items():
                signal.signal(s, handler)


def interrupted_message(output_dir: str | Path, resume: str) -> str:
    """What to tell a user who stopped a run: where its newest checkpoint is and how to continue from it
    (``resume``: the command that does)."""
    found = list_checkpoints(output_dir)
    if not found:
        return f"interrupted before the first checkpoint of {output_dir}: {resume} starts the run over"
    step = int(found[-1].name[len(_PREFIX):])
    return f"interrupted; the last checkpoint is {found[-1]} (step {step}): {resume} continues from it"


def _write_file(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: dict[str, Any],
                    recipe: dict[str, Any], keep_last: int) -> Path:
    """Save the full training state at ``state['step']`` atomically; keep the newest ``keep_last`` (0: all).

    Every process must call it: each writes its own RNG state into the same folder, which must be shared
    (:func:`check_shared_folder`; a state missing there is a :class:`SharedFolderError`). A full disk raises
    :class:`~d3ssl_zoo.disk.DiskFullError`, a folder that no longer takes writes
    :class:`~d3ssl_zoo.disk.UnwritableError`; the checkpoints written before stay intact.
    """
    final = checkpoint_dir(output_dir, state["step"])
    tmp = final.with_name(".tmp-" + final.name)
    previous = list_checkpoints(output_dir)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            missing = [f"random_states_{i}.pkl" for i in range(accelerator.num_processes)
                       if not (tmp / f"random_states_{i}.pkl").is_file()]
            if missing:  # written by their processes into a folder the main process does not see
                raise SharedFolderError(
                    f"{tmp} lacks {', '.join(missing)}: the processes that wrote them see another folder at "
                    f"{output_dir}. Give --output-dir a path on a filesystem every node mounts at that path")
            written = sorted(p for p in tmp.iterdir() if p.is_file())
            for p in written:  # on disk before the rename makes the checkpoint visible
                _fsync(p)
            _write_file(tmp / FILES_FILE, json.dumps({p.name: p.stat().st_size for p in written}, indent=1))
            _write_file(tmp / RECIPE_FILE, yaml.safe_dump(recipe, sort_keys=False))
            _write_file(tmp / STATE_FILE, json.dumps(state, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync(final.parent)
    except (OSError, RuntimeError, SafetensorError) as e:
        full = is_disk_full(e, tmp.parent)
        if not (full or is_unwritable(e)):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        kept = (f"the checkpoints written before are intact (newest: {previous[-1]})" if previous
                else "no earlier checkpoint of this run exists")
        if full:
            raise DiskFullError(final, f"this checkpoint was not written and {kept}") from e
        raise unwritable(e, final, f"this checkpoint was not written and {kept}",
                         f"Make {output_dir} writable again and run the same command again: it resumes from the "
                         f"newest checkpoint") from e
    if accelerator.is_main_process and keep_last > 0:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | Path) -> dict[str, Any]:
    """Verify ``path`` (:func:`verify_checkpoint`), restore the objects prepared by ``accelerator`` and the RNG
    states from it, and return its trainer state."""
    state = verify_checkpoint(path)
    accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    return state
