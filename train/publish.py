"""Publish a pre-trained backbone: safetensors + timm config.json + model card, uploaded to the Hub.

    python train/publish.py --checkpoint runs/d3ssl_r50c4.coco_800ep --tag d3ssl_r50c4.coco_800ep \
        --metric voc07+12_ap=57.6 --metric oknn_top1=72.8
    python train/publish.py --checkpoint runs/.../checkpoints/step_00100000 --tag ... --dry-run --out /tmp/card

``--checkpoint`` is a run folder of ``train/pretrain.py`` (its newest checkpoint is used) or one
``checkpoints/step_*`` folder. The student backbone is taken from it, written with
``d3ssl_zoo.save_pretrained`` together with the run's ``recipe.yaml``, and the model card records
the recipe, data, epochs trained, git commit and the measured numbers given with ``--metric``.
``--dry-run`` writes the folder only. Uploading uses huggingface_hub (log in with
``huggingface-cli login`` or set ``HF_TOKEN``); ``--repo-id`` defaults to the tag's Hub id.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import d3ssl_zoo
from d3ssl_zoo.checkpoint import RECIPE_FILE, STATE_FILE, list_checkpoints, resolve_resume, verify_checkpoint
from d3ssl_zoo.hub import WEIGHTS_NAME, load_state_dict_file, push_to_hub, sha256_file
from d3ssl_zoo.tags import get_tag, hub_org

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKBONE_PREFIX = "student.backbone."  # where the method module keeps the exported network


def find_checkpoint(path: Path) -> Path:
    """A ``checkpoints/step_*`` folder (verified), or the newest intact one of a run folder (a damaged
    newer one is skipped with a warning, as ``--resume auto`` does)."""
    if (path / STATE_FILE).is_file():
        verify_checkpoint(path)
        return path
    if not list_checkpoints(path):
        raise FileNotFoundError(f"{path} is neither a checkpoint folder (with {STATE_FILE}) nor a run folder "
                                f"with checkpoints/step_*; point --checkpoint at the --output-dir of pretrain.py")
    return resolve_resume("auto", path)


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + (" (with uncommitted changes)" if dirty else "")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_metrics(items: list[str]) -> dict[str, object]:
    """``name=value`` strings -> {name: number or list of numbers} for the model card."""
    metrics = {}
    for item in items:
        name, _, raw = item.partition("=")
        if not name.strip() or not raw.strip():
            raise ValueError(f"--metric {item!r} is not name=value (e.g. --metric voc07+12_ap=57.6)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if not (_is_number(value) or (isinstance(value, list) and value and all(map(_is_number, value)))):
            raise ValueError(f"--metric {item!r}: {raw!r} is not a number; give the measured value, e.g. "
                             f"--metric {name.strip()}=57.6 (or several: {name.strip()}=[57.6,82.1,64.0])")
        metrics[name.strip()] = value
    return metrics


def export_folder(checkpoint: Path, tag: str, out: Path, metrics: dict[str, object]) -> Path:
    """Write the publishable folder for ``tag`` from ``checkpoint`` into ``out``."""
    recipe = yaml.safe_load((checkpoint / RECIPE_FILE).read_text())
    state = json.loads((checkpoint / STATE_FILE).read_text())
    arch = recipe["model"]["name"]
    if tag.partition(".")[0] != arch:
        raise ValueError(f"--tag {tag} is for architecture {tag.partition('.')[0]}, but {checkpoint} trained {arch}")
    weights = load_state_dict_file(checkpoint / WEIGHTS_NAME)
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in weights.items() if k.startswith(BACKBONE_PREFIX)}
    if not backbone:
        raise ValueError(f"{checkpoint / WEIGHTS_NAME} holds no {BACKBONE_PREFIX}* weights: "
                         "not a pretrain.py checkpoint")
    model = d3ssl_zoo.create_model(arch, pretrained=False)
    model.load_state_dict(backbone, strict=True)
    epochs = state["step"] / state["steps_per_epoch"]
    card = {"recipe": f"{recipe['tag']} (the run's full recipe: recipe.yaml in this repo)",
            "data": recipe["dataset"]["source"],
            "epochs trained": f"{epochs:g} of {recipe['train']['epochs']} ({state['step']} steps, "
                              f"global batch {state['global_batch']})",
            "git commit": git_commit(), **{f"measured: {k}": v for k, v in metrics.items()}}
    d3ssl_zoo.save_pretrained(model, out, model_name=tag, card_extra=card)
    shutil.copyfile(checkpoint / RECIPE_FILE, out / "recipe.yaml")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="run folder or checkpoints/step_* folder")
    p.add_argument("--tag", required=True, help="model.tag to publish as, e.g. d3ssl_r50c4.coco_800ep")
    p.add_argument("--repo-id", help="Hub repo (default: the tag's hf_hub_id, <org>/<model.tag>)")
    p.add_argument("--metric", action="append", default=[], metavar="name=value",
                   help="a number measured on this checkpoint, for the model card (repeatable)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--dry-run", action="store_true", help="write the folder only, upload nothing")
    p.add_argument("--out", type=Path, help="folder to write (required with --dry-run; default: a temp folder)")
    args = p.parse_args(argv)
    if args.dry_run and args.out is None:
        p.error("--dry-run needs --out DIR")
    entry = get_tag(args.tag)
    repo_id = args.repo_id or (entry.hf_hub_id if entry is not None else f"{hub_org()}/{args.tag}")
    try:
        metrics = parse_metrics(args.metric)
        checkpoint = find_checkpoint(args.checkpoint)
        with tempfile.TemporaryDirectory(prefix="d3ssl_publish_") as tmp:
            out = export_folder(checkpoint, args.tag, args.out or Path(tmp) / args.tag, metrics)
            print(f"wrote {out} from {checkpoint}; sha256 of {WEIGHTS_NAME}: {sha256_file(out / WEIGHTS_NAME)}")
            if args.dry_run:
                return 0
            url = push_to_hub(out, repo_id, private=args.private,
                              commit_message=f"Upload {args.tag} from {checkpoint.name}")
    except ConnectionError as e:
        print(f"publish.py: {e}. Nothing was uploaded. Write the folder with --dry-run --out DIR and upload it "
              f"later from a connected machine (huggingface-cli upload {repo_id} DIR).", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"publish.py: {e}", file=sys.stderr)
        return 2
    print(f"uploaded to https://huggingface.co/{repo_id}: {url}")
    if entry is None:
        print(f"note: {args.tag} is not a tag of the zoo table (d3ssl_zoo/tags.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
