"""Fine-tuning recipes (config as data): ``d3ssl_zoo/recipes/det_voc.yaml`` and ``det_coco.yaml``
(``base: det_voc``), read by the package's recipe loader (:mod:`d3ssl_zoo.recipe`).

The defaults below are the paper's transfer protocol (§5 "Setting", MoCo's detectron2
configs): Faster R-CNN R50-C4 on VOC07+12 for 24k iterations, Mask R-CNN R50-C4 on COCO with
the 1x schedule (90k iterations), 16 images per batch, SGD lr 0.02, SyncBN.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union

from d3ssl_zoo.recipe import describe, load_config

from .model import C4DetectorConfig

__all__ = ["DetRecipe", "load_det_recipe", "describe_det_recipe", "lr_factor"]


@dataclass
class DetRecipe(C4DetectorConfig):
    """A fine-tuning recipe: the detector's fields (inherited from ``C4DetectorConfig``, named
    once there) plus data, solver and engine settings."""

    task: str = "voc"                                         # voc | coco
    # data, relative to --data
    voc_train: List[Tuple[str, str]] = field(default_factory=lambda: [("2007", "trainval"), ("2012", "trainval")])
    voc_test: Tuple[str, str] = ("2007", "test")
    coco_train: Tuple[str, str] = ("annotations/instances_train2017.json", "train2017")
    coco_test: Tuple[str, str] = ("annotations/instances_val2017.json", "val2017")
    # solver (detectron2 defaults; MoCo's VOC config shortens warm-up to 100 iterations)
    ims_per_batch: int = 16
    reference_batch: int = 16                                 # base_lr is for this many images
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    max_iter: int = 24000
    steps: Tuple[int, ...] = (18000, 22000)
    gamma: float = 0.1
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    # engine
    sync_bn: bool = True
    mixed_precision: str = "no"                               # no | fp16 | bf16 (Accelerate)
    checkpoint_period: int = 2000
    keep_last: int = 0                                        # newest checkpoints kept (0: all, as detectron2)
    log_period: int = 20
    num_workers: int = 4
    eval_ims_per_batch: int = 1
    precise_bn_iters: int = 200                               # MoCo's TEST.PRECISE_BN (detectron2: 200 iterations)
    voc_07_metric: bool = True                                # 11-point AP on VOC2007 test
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in ("voc", "coco"):
            raise ValueError(f"recipe task must be 'voc' or 'coco', got {self.task!r}")
        if list(self.steps) != sorted(self.steps):
            raise ValueError(f"recipe steps must increase, got {self.steps}")

    def detector_config(self) -> C4DetectorConfig:
        return C4DetectorConfig(**{f.name: _as_tuple(getattr(self, f.name)) for f in fields(C4DetectorConfig)})

    def lr(self) -> float:
        """``base_lr`` scaled linearly to ``ims_per_batch`` (the linear scaling rule)."""
        return self.base_lr * self.ims_per_batch / self.reference_batch


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def load_det_recipe(path: Optional[Path] = None,
                    overrides: Union[Iterable[str], Mapping[str, Any], None] = None) -> DetRecipe:
    """Read a recipe YAML with its ``base:`` chain (every key a ``DetRecipe`` field, typed as the
    field says), then apply ``overrides`` (``key=value`` strings or a mapping)."""
    return load_config(DetRecipe, path, overrides or ())


def describe_det_recipe(path: Path, overrides: Iterable[str] = ()) -> str:
    """The recipe fully resolved, as YAML, each value followed by the file or override it comes from."""
    return describe(DetRecipe, path, overrides)


def lr_factor(step: int, recipe: DetRecipe) -> float:
    """detectron2's WarmupMultiStepLR: linear warm-up from ``warmup_factor``, x``gamma`` at each step."""
    decay = recipe.gamma ** sum(step >= s for s in recipe.steps)
    if step >= recipe.warmup_iters:
        return decay
    alpha = step / recipe.warmup_iters
    return decay * (recipe.warmup_factor * (1 - alpha) + alpha)
