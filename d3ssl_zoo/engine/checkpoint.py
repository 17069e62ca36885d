"""Atomic, resumable checkpoints of everything the run needs.

A checkpoint is ``<output_dir>/checkpoints/step_XXXXXXXX/`` holding Accelerate's ``save_state``
(the method module -- student, teacher, queue keys and pointer --, optimiser, AMP scaler and the
RNG states of every process), ``trainer_state.json`` (step, epoch, position in the epoch) and the
``recipe.yaml`` of the run. The learning-rate and momentum schedules are pure functions of the
step, so restoring the step restores them. A checkpoint is written into a hidden temporary folder
and renamed once complete: a run killed while saving leaves the previous checkpoints intact, and
only complete checkpoints (with ``trainer_state.json``) are ever resumed from.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from accelerate import Accelerator

__all__ = ["STATE_FILE", "RECIPE_FILE", "checkpoint_dir", "list_checkpoints", "resolve_resume",
           "save_checkpoint", "load_checkpoint"]

STATE_FILE = "trainer_state.json"
RECIPE_FILE = "recipe.yaml"
_PREFIX = "step_"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{_PREFIX}{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(_PREFIX):]))


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``None`` -> start fresh; ``'auto'`` -> the newest complete checkpoint of ``output_dir`` or fresh;
    a path -> that checkpoint (an error if it is not a complete checkpoint folder)."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE}); give a "
            f"<output_dir>/checkpoints/step_* folder or --resume auto")
    return path


def _write_file(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: dict[str, Any],
                    recipe: dict[str, Any], keep_last: int) -> Path:
    """Save the full training state at ``state['step']`` atomically; keep the newest ``keep_last``.

    Every process must call it (each writes its own RNG state).
    """
    final = checkpoint_dir(output_dir, state["step"])
    tmp = final.with_name(".tmp-" + final.name)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_file(tmp / RECIPE_FILE, yaml.safe_dump(recipe, sort_keys=False))
        _write_file(tmp / STATE_FILE, json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | Path) -> dict[str, Any]:
    """Restore the objects prepared by ``accelerator`` (and the RNG states) from ``path``; return its trainer state."""
    path = Path(path)
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())
