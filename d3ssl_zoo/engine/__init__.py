"""The pre-training engine: typed recipes, the Accelerate loop, and atomic checkpoints.

The method (``d3ssl_zoo.method``) and the data pipeline (``d3ssl_zoo.data``) know nothing of it.
"""
from .checkpoint import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from .config import (DatasetConfig, MethodConfig, ModelConfig, OptimConfig, Recipe, TrainConfig,
                     UnknownRecipeKeyError, apply_overrides, load_recipe, recipe_from_dict, recipe_to_dict,
                     valid_keys)
from .trainer import EpochShuffleSampler, NonFiniteLossError, TrainResult, accumulation_steps, build_method, train

__all__ = [
    "Recipe", "ModelConfig", "MethodConfig", "DatasetConfig", "OptimConfig", "TrainConfig", "UnknownRecipeKeyError",
    "load_recipe", "recipe_from_dict", "recipe_to_dict", "apply_overrides", "valid_keys", "train", "TrainResult",
    "NonFiniteLossError", "EpochShuffleSampler", "accumulation_steps", "build_method", "save_checkpoint", "load_checkpoint",
    "list_checkpoints", "resolve_resume",
]
