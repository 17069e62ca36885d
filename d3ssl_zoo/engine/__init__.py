"""The pre-training engine: typed pre-training recipes and the Accelerate loop.

It builds on the package's recipe loader (:mod:`d3ssl_zoo.recipe`) and checkpoint folders
(:mod:`d3ssl_zoo.checkpoint`, whose functions are re-exported here for the pre-training runs); the
method (``d3ssl_zoo.method``) and the data pipeline (``d3ssl_zoo.data``) know nothing of it.
"""
from d3ssl_zoo.checkpoint import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint

from .config import (
                     DatasetConfig,
                     MethodConfig,
                     ModelConfig,
                     OptimConfig,
                     Recipe,
                     TrainConfig,
                     UnknownRecipeKeyError,
                     apply_overrides,
                     describe_recipe,
                     load_recipe,
                     recipe_from_dict,
                     recipe_to_dict,
                     valid_keys,
)
from .trainer import EpochShuffleSampler, NonFiniteLossError, TrainResult, accumulation_steps, build_method, train

__all__ = [
    "Recipe", "ModelConfig", "MethodConfig", "DatasetConfig", "OptimConfig", "TrainConfig", "UnknownRecipeKeyError",
    "load_recipe", "describe_recipe", "recipe_from_dict", "recipe_to_dict", "apply_overrides", "valid_keys", "train",
    "TrainResult", "NonFiniteLossError", "EpochShuffleSampler", "accumulation_steps", "build_method",
    "save_checkpoint", "load_checkpoint", "list_checkpoints", "resolve_resume",
]
