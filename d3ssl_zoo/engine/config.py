"""Pre-training recipes: the :class:`Recipe` dataclasses, read from YAML by :mod:`d3ssl_zoo.recipe`.

A recipe (``d3ssl_zoo/recipes/<model.tag>.yaml``, shipped in the package) names every
hyper-parameter once, in sections that mirror the dataclasses below (``model``, ``method``,
``data``, ``dataset``, ``optim``, ``train``). Code reads the typed :class:`Recipe`, never a raw
dict. A key that is not a field, in a file or in an override, is an error that lists the valid keys.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from d3ssl_zoo import recipe as _recipe
from d3ssl_zoo.data.config import PretrainDataConfig
from d3ssl_zoo.models.d3ssl_resnet import PADDING_MODES
from d3ssl_zoo.recipe import UnknownRecipeKeyError

__all__ = ["ModelConfig", "MethodConfig", "DatasetConfig", "OptimConfig", "TrainConfig", "Recipe",
           "UnknownRecipeKeyError", "load_recipe", "describe_recipe", "recipe_from_dict", "recipe_to_dict",
           "valid_keys", "apply_overrides", "ADDED_KEYS", "REPLACED_KEYS", "KEEPS_RESULT", "resumable_keys"]

METHODS = ("d3ssl", "soco")
PRECISIONS = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb", "none")
MEMORY_FORMATS = ("contiguous", "channels_last")
#: Keys added after runs were checkpointed, with the value that does what the code did before them: a
#: checkpoint whose recipe lacks one resumes under a recipe that states that value, and is rebuilt with it.
ADDED_KEYS = {"model.zero_init_last": False, "model.padding_mode": "zeros", "train.memory_format": "contiguous",
              "data.soco_crop_retry": "k", "data.soco_pairing": "position", "data.soco_cutout_clip": "box"}
#: Keys that later recipes express by another key: ``{old key: {old value: (new key, new value)}}``; a checkpoint
#: whose recipe has the old key with such a value resumes under a recipe that states the new one.
#: ``data.prc_area_reading: false`` was PRC's side reading, now ``data.prc_rule: side`` (docs/design.md).
REPLACED_KEYS = {"data.prc_area_reading": {False: ("data.prc_rule", "side")}}
#: Field metadata of the settings that do not define the run: a resumed run may change them (each change is
#: logged). Every other key defines the run, and a relaunch that changes it is refused. The data is recognised
#: by content (the images and sizes the proposal file gives them, stored with each checkpoint), not by path.
KEEPS_RESULT = {"changes_result": False}


@dataclass
class ModelConfig:
    name: str = "d3ssl_r50c4"  # zoo architecture of the student backbone
    zero_init_last: bool = True  # SoCo: each residual block's last BN weight starts at 0 (SoCo's ResNet)
    padding_mode: str = "zeros"  # ResNet's; "circular" takes the image border's position signal away (a diagnostic)

    def kwargs(self) -> dict[str, Any]:
        """What ``create_model(name, **kwargs)`` takes to build this backbone (every field but the name)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}


@dataclass
class MethodConfig:
    name: str = "d3ssl"  # 'd3ssl' (Sec. 4.2) or 'soco' (baseline)
    proj_hidden_dim: int = 4096  # SoCo: projector 2048-4096-256 with BN
    proj_dim: int = 256  # SoCo
    pred_hidden_dim: int = 4096  # SoCo: BYOL predictor 256-4096-256 (soco only)
    tau: float = 0.2  # MoCo v2 / DenseCL: temperature of Eq. 5
    queue_size: int = 65536  # MoCo v2 / DenseCL: memory bank size
    momentum_base: float = 0.99  # SoCo: teacher momentum at step 0
    momentum_final: float = 1.0  # SoCo: teacher momentum at the end (cosine)
    roi_size: int = 14  # SoCo: RoIAlign on C4 for the 224 views
    roi_size_small: int = 7  # SoCo: RoIAlign on C4 for the 112 view x2-s
    sync_bn: bool = True  # SoCo: SyncBN across processes (GPU only)
    bn_groups: int = 1  # MoCo: shuffling BN over this many groups of each micro-batch (d3ssl only; 1 = off)


@dataclass
class DatasetConfig:
    source: str = field(default="sample", metadata=KEEPS_RESULT)  # COCO json, image folder, or 'sample'
    # selective-search proposal file; None: the data pipeline's default
    proposals: str | None = field(default=None, metadata=KEEPS_RESULT)


@dataclass
class OptimConfig:
    base_lr: float = 1.0  # SoCo: LARS lr per base_batch images
    base_batch: int = 256  # SoCo: linear scaling reference
    weight_decay: float = 1e-5  # SoCo
    momentum: float = 0.9  # SoCo: LARS momentum
    eta: float = 0.001  # SoCo: LARS trust coefficient
    warmup_epochs: float = 10.0  # SoCo: linear warm-up
    final_lr: float = 0.0  # SoCo: cosine decays to 0


@dataclass
class TrainConfig:
    epochs: int = 800  # paper
    global_batch: int | None = None  # images per optimiser step over all processes; None: batch_size x processes
    batch_size: int = 64  # ours: micro-batch per process (gradient accumulation makes up the global batch)
    seed: int = 0  # ours
    mixed_precision: str = "no"  # 'no', 'bf16' or 'fp16' (Accelerate)
    # ours: 'contiguous' or 'channels_last', the layout of the model's weights and images on the device
    # (engine/device.py; benchmarks/gpu_check.py says which is faster on a GPU). Not part of the run's
    # definition: it changes which kernels compute each step, so the rounding, as a different GPU or cuDNN's
    # choice of algorithm does, not the computation the recipe defines; a resumed run may switch to the faster one.
    memory_format: str = field(default="contiguous", metadata=KEEPS_RESULT)
    num_workers: int = field(default=8, metadata=KEEPS_RESULT)  # ours: data loader workers per process
    log_every: int = field(default=10, metadata=KEEPS_RESULT)  # ours: steps between tracker logs
    # ours: steps between checkpoints (and one at the end)
    checkpoint_every: int = field(default=1000, metadata=KEEPS_RESULT)
    keep_last: int = field(default=3, metadata=KEEPS_RESULT)  # ours: checkpoints kept
    tracker: str = field(default="tensorboard", metadata=KEEPS_RESULT)  # 'tensorboard', 'wandb' or 'none'


@dataclass
class Recipe:
    tag: str = "d3ssl_r50c4.coco_800ep"  # the zoo tag this recipe reproduces
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model.padding_mode not in PADDING_MODES:
            raise ValueError(f"model.padding_mode must be one of {PADDING_MODES}, got {self.model.padding_mode!r}")
        if self.method.name not in METHODS:
            raise ValueError(f"method.name must be one of {METHODS}, got {self.method.name!r}")
        if self.train.mixed_precision not in PRECISIONS:
            raise ValueError(f"train.mixed_precision must be one of {PRECISIONS}, got {self.train.mixed_precision!r}")
        if self.train.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"train.memory_format must be one of {MEMORY_FORMATS} (the layout of the model's "
                             f"weights and images on the device), got {self.train.memory_format!r}")
        if self.train.tracker not in TRACKERS:
            raise ValueError(f"train.tracker must be one of {TRACKERS}, got {self.train.tracker!r}")
        if self.method.name == "soco" and (self.data.views != "soco" or self.data.depositioning):
            raise ValueError("method.name=soco needs data.views=soco and data.depositioning=false "
                             "(SoCo has two views and no L_dp)")
        if self.method.name == "d3ssl" and self.data.views != "d3ssl":
            raise ValueError("method.name=d3ssl needs data.views=d3ssl (x1, x2, x2-s of Sec. 4)")
        if not self.method.tau > 0:  # Eq. 5 divides by tau: 0 gives inf/NaN, < 0 inverts the contrast
            raise ValueError(f"method.tau must be > 0 (the temperature of Eq. 5; the recipes use 0.2), "
                             f"got {self.method.tau}")
        if self.train.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1 (images per micro-batch on each process), "
                             f"got {self.train.batch_size}")
        for name in ("epochs", "log_every", "checkpoint_every", "keep_last"):
            if getattr(self.train, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self.train, name)}")
        if not 0 <= self.train.seed < 2**32:  # what numpy's and torch's generators accept
            raise ValueError(f"train.seed must be an integer from 0 to 2**32 - 1, got {self.train.seed}")
        if not 0 < self.optim.base_lr < math.inf:  # <= 0 would ascend the loss or not move at all
            raise ValueError(f"optim.base_lr must be a finite number > 0 (the learning rate per optim.base_batch "
                             f"images, scaled linearly to the global batch; SoCo's is 1.0), got {self.optim.base_lr}")
        if self.method.bn_groups < 1:
            raise ValueError(f"method.bn_groups must be >= 1 (1 = one BN batch; > 1 = MoCo's shuffling BN), "
                             f"got {self.method.bn_groups}")
        if self.method.name == "soco" and self.method.bn_groups != 1:
            raise ValueError("method.bn_groups applies to d3ssl's memory-bank InfoNCE; SoCo's BYOL loss has no "
                             "negatives to leak batch statistics to: set method.bn_groups=1")
        if self.method.bn_groups > self.train.batch_size:
            raise ValueError(f"method.bn_groups={self.method.bn_groups} is more than the micro-batch "
                             f"train.batch_size={self.train.batch_size}: every BN group needs images")
        if self.train.global_batch is not None and self.train.global_batch < 1:
            raise ValueError(f"train.global_batch must be >= 1 or null, got {self.train.global_batch}")


def valid_keys() -> list[str]:
    """Every dotted key a pre-training recipe accepts, e.g. ``method.tau``."""
    return _recipe.valid_keys(Recipe)


def resumable_keys() -> list[str]:
    """The dotted keys a resumed run may change (fields with :data:`KEEPS_RESULT` metadata, in any section)."""
    keys = []

    def walk(config: Any, prefix: str) -> None:
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif f.metadata.get("changes_result", True) is False:
                keys.append(prefix + f.name)
    walk(Recipe(), "")
    return keys


def recipe_from_dict(d: Mapping[str, Any]) -> Recipe:
    """Build a :class:`Recipe` from nested mappings; missing keys keep their defaults."""
    return _recipe.config_from_dict(Recipe, d)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Nested plain-YAML dict (tuples become lists) that :func:`recipe_from_dict` reads back."""
    return _recipe.config_to_dict(recipe)


def apply_overrides(d: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``key=value`` strings (``method.tau=0.1``) or a mapping of dotted keys to a recipe dict."""
    return _recipe.apply_overrides(d, overrides, Recipe)


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe YAML file (with its ``base:`` chain) and apply ``key=value`` overrides."""
    return _recipe.load_config(Recipe, path, overrides)


def describe_recipe(path: str | Path, overrides: Iterable[str] = ()) -> str:
    """The recipe fully resolved, as YAML, each value followed by where it came from: the file of the
    ``base:`` chain that sets it (with that file's source comment) or the command-line override."""
    return _recipe.describe(Recipe, path, overrides)
