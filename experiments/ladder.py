"""The mini ladder's shared helpers: its rungs, the evaluations, checkpoint and random-init loaders,
the supervised ceiling, the results store and the de-positioning shift statistics.

``experiments.mini_ladder`` (the command line) and the ``experiments.diagnose_*`` scripts build on
these, so that every diagnostic reads a run exactly as the ladder does.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

import d3ssl_zoo
from d3ssl_zoo.checkpoint import RECIPE_FILE
from d3ssl_zoo.data.composite import _depositioning_shift
from d3ssl_zoo.engine import list_checkpoints
from d3ssl_zoo.engine.config import ADDED_KEYS, ModelConfig
from d3ssl_zoo.evaluation.coupling import run_coupling
from d3ssl_zoo.evaluation.mcs import run_mcs
from d3ssl_zoo.evaluation.oknn import run_oknn
from experiments.supervised import train_roi_classifier

__all__ = ["RUNGS", "PAPER", "RECIPES", "RECIPE_FILE", "recipe_path", "evaluate", "cr_and_mcs", "add_standard_errors",
           "checkpoint_step", "final_checkpoint", "build_backbone", "backbone_from_checkpoint", "initial_backbone",
           "supervised_ceiling", "Results", "READINGS", "SHIFT_READINGS", "shift_statistics"]

RECIPES = Path(__file__).resolve().parent / "recipes"  # one recipe per rung: <rung>.yaml
RUNGS = {  # name: what the rung is in the paper
    "d3ssl": "D3SSL (L_dc + L_dp)",
    "d3ssl_dconly": "D3SSL w/o L_dp (Tab. 7)",
    "d3ssl_dp1": "D3SSL, L_dp on 1 of K proposals",
    "soco": "SoCo",
    "soco_d3aug": "SoCo + Aug_D3SSL (Tab. 6)",
}
# The paper's numbers for the directions (R50-C4, 200-800 epochs on COCO / OpenImage-MINI).
PAPER = {
    "oknn": {"soco": (70.2, 88.3), "d3ssl": (73.1, 90.1)},  # Tab. 4 top-1, top-5
    "disturbed_oknn": {"soco": (47.0, 66.1), "d3ssl": (55.8, 73.4)},  # Tab. 4
    "cr": {"d3ssl_dconly": 1.33, "d3ssl": 1.17, "soco": 1.31, "soco_d3aug": 1.20},  # Tab. 7, Tab. 6 (stage not given)
    "mcs": {"d3ssl_dconly": 0.68, "d3ssl": 0.82},  # Tab. 7
}

# The readings of the paper (and of SoCo's code) that the rungs' data path follows, written into every new
# ladder folder's results.json (meta.readings) and printed under its question, so that results made with other
# readings are told apart. docs/design.md ("Readings of the paper") gives each one's source; edit this
# when a reading changes.
READINGS = {
    "proposals": "OpenCV selective search, fast mode, at the scenes' own 160 px, then SoCo's filters",
    "PRC": "area fraction per view, top-up and restore past s (the authors' RCC)",
    "de-positioning": "n = 1 of the K proposals in x3, by the property rule (docs/design.md)",
    "SoCo data path": "as SoCo's C4 code: crop retries with halving threshold, proposal-id pairing (c1*c2), "
                      "cutout clipped to the image",
}


def recipe_path(rung: str) -> Path:
    """The recipe file of a rung (``experiments/recipes/<rung>.yaml``)."""
    if rung not in RUNGS:
        raise ValueError(f"unknown rung {rung!r}; the rungs are {', '.join(RUNGS)}")
    return RECIPES / f"{rung}.yaml"


# ---------------------------------------------------------------- evaluation
def evaluate(model: torch.nn.Module, scenes, settings: dict, seed: int, full: bool) -> dict:
    """O-KNN (and, if ``full``, disturbed O-KNN, CR and MCS per stage) of one backbone."""
    splits = (scenes.train_ann, scenes.train_images, scenes.val_ann, scenes.val_images)
    model.eval()
    out = {}
    r = run_oknn(model, *splits, short_side=settings["short_side"], seed=seed, progress=False)
    out["oknn"] = {"top1": r["top1"], "top5": r["top5"], "num_bank": r["num_bank"], "num_queries": r["num_queries"]}
    if full:
        r = run_oknn(model, *splits, short_side=settings["short_side"], seed=seed, disturbed=True, progress=False)
        out["disturbed_oknn"] = {"top1": r["top1"], "top5": r["top5"], "num_queries": r["num_queries"]}
        out.update(cr_and_mcs(model, scenes, settings, seed))
    return out


def cr_and_mcs(model: torch.nn.Module, scenes, settings: dict, seed: int) -> dict:
    """Coupling rate and positional MCS per stage, each with its standard error over the pairs / crops."""
    size, min_size = settings["object_size"], settings["min_object_size"]
    cr = run_coupling(model, scenes.val_ann, scenes.val_images, num_pairs=settings["num_pairs"],
                      object_size=size, min_object_size=min_size, seed=seed, progress=False)
    mcs = run_mcs(model, scenes.val_ann, scenes.val_images, num_crops=settings["num_crops"], tile_size=size,
                  min_object_size=min_size, seed=seed, progress=False)
    out = {}
    for name, r, n in (("cr", cr, cr["num_pairs"]), ("mcs", mcs, mcs["num_crops"])):
        out[name] = r["per_stage"]
        out[f"{name}_se"] = {s: std / np.sqrt(n) for s, std in r["per_stage_std"].items()}
    out["cr_cosines"] = cr["per_stage_cosines"]  # cos(A1,B), cos(A2,B), cos(A1,A2): the room CR has
    out["cr_max"] = cr["per_stage_max_rate"]  # CR <= 1 / cos(A2, B) per pair
    return out


def add_standard_errors(results: Results, key: str, model: torch.nn.Module, scenes, settings: dict, seed: int) -> None:
    """Give a final evaluation stored before the ladder kept the standard errors of CR and MCS those
    errors, from the same evaluation run again. Its stored means must come out again: a mean that
    differs was made with other code or weights, and is refused rather than mixed with new errors."""
    old = results.data["evals"][key]
    new = cr_and_mcs(model, scenes, settings, seed)
    for name in ("cr", "mcs"):
        for s, v in old[name].items():
            if abs(v - new[name][s]) > 1e-4:
                raise RuntimeError(f"{key}: {name} at {s} comes out as {new[name][s]:.4f} now, {v:.4f} in "
                                   f"{results.path}, so it was evaluated with other code or weights; delete "
                                   f"{key} from that file to evaluate it again")
    results.put(key, {**old, "cr_se": new["cr_se"], "mcs_se": new["mcs_se"]})
    print(f"[ladder] {key}: standard errors of CR and MCS added", flush=True)


def checkpoint_step(ckpt: Path) -> int:
    """The optimiser step a checkpoint folder was written at (its ``trainer_state.json``)."""
    return json.loads((ckpt / "trainer_state.json").read_text())["step"]


def final_checkpoint(run: Path, hint: str = "") -> tuple[Path, dict]:
    """The newest checkpoint of a run folder and the recipe it was written with (as the run resolved it)."""
    ckpts = list_checkpoints(run)
    if not ckpts:
        raise SystemExit(f"{run} has no checkpoints{hint}")
    final = max(ckpts, key=checkpoint_step)
    return final, yaml.safe_load((final / RECIPE_FILE).read_text())


def build_backbone(model: dict) -> torch.nn.Module:
    """A random backbone as a recipe's ``model:`` section builds it; a key the recipe predates takes the value
    that behaves as the code did then (``ADDED_KEYS``, as for resuming)."""
    then = {k.split(".", 1)[1]: v for k, v in ADDED_KEYS.items() if k.startswith("model.")}
    return d3ssl_zoo.create_model(model["name"], pretrained=False, **ModelConfig(**{**then, **model}).kwargs())


def backbone_from_checkpoint(ckpt: Path, network: str = "student") -> torch.nn.Module:
    """The student (or the momentum ``teacher``) backbone of a training checkpoint (Accelerate's
    ``model.safetensors``), built as its recipe says."""
    state = load_file(str(ckpt / "model.safetensors"))
    prefix = f"{network}.backbone."
    backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not backbone:
        raise ValueError(f"{ckpt / 'model.safetensors'} holds no '{prefix}*' weights; is it a train/pretrain.py "
                         "checkpoint?")
    model = build_backbone(yaml.safe_load((ckpt / RECIPE_FILE).read_text())["model"])
    model.load_state_dict(backbone, strict=True)
    return model.eval()


def initial_backbone(recipe: dict, seed: int) -> torch.nn.Module:
    """The exact weights a run of ``recipe`` with ``seed`` starts from (the engine seeds, then builds)."""
    from accelerate.utils import set_seed

    set_seed(seed)
    return build_backbone(recipe["model"]).eval()


def supervised_ceiling(recipe: dict, scenes, steps: int, short_side: int) -> tuple[torch.nn.Module, dict]:
    """The ladder's ceiling: the recipe's backbone from torchvision's init (a supervised run), trained with the
    labels of the scene set's train split as a RoI classifier; returns it and its training summary."""
    model = build_backbone({**recipe["model"], "zero_init_last": False})
    torch.manual_seed(0)
    info = train_roi_classifier(model, scenes.train_ann, scenes.train_images, steps=steps, short_side=short_side,
                                progress=False)
    return model.eval(), info


# ---------------------------------------------------------------- results store
class Results:
    """``results.json``: every finished evaluation under a key, written atomically after each; beside them the
    ladder's settings (``meta``), the commands that built the folder and the question it answers."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        old = self.data.get("meta", {}).get("settings")
        if old is not None and old != meta["settings"]:
            raise ValueError(f"{path} was written with other settings {old}; use another --out or the same settings")
        # runs made with other readings of the paper are not added to a folder labelled with these
        old = self.data.get("meta", {}).get("readings")
        if "readings" in meta and self.data.get("evals") and old != meta["readings"]:
            raise ValueError(f"{path} holds results made with other readings of the paper ({old or 'not recorded'}) "
                             f"than experiments.ladder.READINGS; use another --out")
        self.data.setdefault("evals", {})
        self.data["meta"] = meta

    @classmethod
    def read(cls, path: Path) -> "Results":
        """A ``results.json`` as it stands (for its report)."""
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run the ladder with --out {path.parent} first")
        return cls(path, json.loads(path.read_text())["meta"])

    def record_command(self, command: str) -> None:
        """Add ``command`` to the commands that built the folder (``command``: one string, or the list of
        them where several did, e.g. two batches of seeds), unless it is there already."""
        known = self.data.get("command")
        made = [] if known is None else [known] if isinstance(known, str) else list(known)
        if command not in made:
            made.append(command)
            self.data["command"] = made[0] if len(made) == 1 else made
            self.save()

    def has(self, key: str) -> bool:
        return key in self.data["evals"]

    def put(self, key: str, value: dict) -> None:
        self.data["evals"][key] = value
        self.save()

    def put_extra(self, name: str, value) -> None:
        self.data[name] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- the de-positioning shift (Eq. 6-8)
SHIFT_READINGS = ("all K (literal)", "1 of K")  # the composites shift_statistics measures, in report order


def shift_statistics(recipe: dict, scenes, num_images: int = 400, seed: int = 0) -> dict:
    """How far Eq. 6-8 moves the pasted proposals, for the literal reading (all K) and for 1 of K.

    The shift t is drawn by the data pipeline's own function (private to the package, which needs it for
    nothing else), so the statistics are those of the views the rungs train on.

    Draws the views of ``num_images`` pre-training images as the data pipeline does and reports
    the share of zero shifts, the median |t| in pixels of the view, and the median share of the
    view that the union of the pasted proposals covers.
    """
    from d3ssl_zoo.data.config import PretrainDataConfig
    from d3ssl_zoo.data.datasets import build_pretrain_dataset

    cfg = PretrainDataConfig.from_dict({**recipe["data"], "depositioning": False, "views": "d3ssl"})
    ds = build_pretrain_dataset(cfg, recipe["dataset"]["source"], recipe["dataset"]["proposals"], seed=seed)
    out = {}
    for name, n in zip(SHIFT_READINGS, (cfg.num_proposals, 1)):
        rng = np.random.default_rng(seed)
        zero, mags, cover = 0, [], []
        for i in range(min(num_images, len(ds))):
            b2 = ds[i]["boxes2"][:n]
            t = _depositioning_shift(b2, cfg.image_size, cfg.image_size, rng)
            zero += int((t == 0).all())
            mags.append(float(np.hypot(*t)))
            m = np.zeros((cfg.image_size, cfg.image_size), bool)
            for x0, y0, x1, y1 in b2.astype(int):
                m[y0:y1, x0:x1] = True
            cover.append(float(m.mean()))
        out[name] = {"zero_shift_share": zero / len(mags), "median_shift_px": float(np.median(mags)),
                     "mean_shift_px": float(np.mean(mags)), "median_union_cover": float(np.median(cover)),
                     "view_px": cfg.image_size, "images": len(mags)}
    return out
