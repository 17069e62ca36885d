"""Typed training recipes: dataclasses loaded from YAML, with ``key=value`` overrides.

A recipe (``d3ssl_zoo/recipes/<model.tag>.yaml``, shipped in the package) names every
hyper-parameter once, in sections that mirror the dataclasses below (``model``, ``method``,
``data``, ``dataset``, ``optim``, ``train``). Code reads the typed :class:`Recipe`, never a raw
dict. A key that is not a field, in a file or in an override, is an error that lists the valid keys.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from d3ssl_zoo.data.config import PretrainDataConfig
from d3ssl_zoo.models.d3ssl_resnet import PADDING_MODES

__all__ = ["ModelConfig", "MethodConfig", "DatasetConfig", "OptimConfig", "TrainConfig", "Recipe",
           "UnknownRecipeKeyError", "load_recipe", "recipe_from_dict", "recipe_to_dict", "valid_keys",
           "apply_overrides"]

METHODS = ("d3ssl", "soco")
PRECISIONS = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb", "none")
#: Keys added after runs were checkpointed, with the value that does what the code did before them: a
#: checkpoint whose recipe lacks one resumes under a recipe that states that value, and is rebuilt with it.
ADDED_KEYS = {"model.zero_init_last": False, "model.padding_mode": "zeros"}


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
    source: str = "sample"  # COCO json, image folder, or 'sample'
    proposals: str | None = None  # selective-search proposal file; None: the data pipeline's default


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
    num_workers: int = 8  # ours: data loader workers per process
    log_every: int = 10  # ours: steps between tracker logs
    checkpoint_every: int = 1000  # ours: steps between checkpoints (and one at the end)
    keep_last: int = 3  # ours: checkpoints kept
    tracker: str = "tensorboard"  # 'tensorboard', 'wandb' or 'none'


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
        for name in ("batch_size", "epochs", "log_every", "checkpoint_every", "keep_last"):
            if getattr(self.train, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self.train, name)}")


class UnknownRecipeKeyError(ValueError):
    """A recipe file or override names a key that is not a recipe field."""


def valid_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every dotted key a recipe accepts, e.g. ``method.tau``."""
    keys = []
    for f, hint in _fields(cls):
        if dataclasses.is_dataclass(hint):
            keys += valid_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _unknown(key: str, root: type | None = None) -> UnknownRecipeKeyError:
    keys = valid_keys(root or Recipe)
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return UnknownRecipeKeyError(f"unknown recipe key {key!r}{hint}; valid keys: {', '.join(keys)}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError("; ".join(errors))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args and args[-1] is not Ellipsis and len(value) != len(args)):
            raise TypeError(f"{key} must be a list of {len(args)} values, got {value!r}")
        item_hints = [args[0]] * len(value) if args and args[-1] is Ellipsis else list(args)
        return tuple(_coerce(v, h, key) for v, h in zip(value, item_hints))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise TypeError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"{key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported recipe field type {hint}")


def _build(cls: type, d: Mapping[str, Any], prefix: str, root: type | None = None) -> Any:
    if not isinstance(d, Mapping):
        raise TypeError(f"recipe section {prefix.rstrip('.') or '<root>'} must be a mapping, got {d!r}")
    fields = dict((f.name, hint) for f, hint in _fields(cls))
    for k in d:
        if k not in fields:
            raise _unknown(prefix + str(k), root or cls)
    kwargs = {}
    for name, value in d.items():
        hint = fields[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{prefix}{name}.", root or cls)
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def recipe_from_dict(d: Mapping[str, Any]) -> Recipe:
    """Build a :class:`Recipe` from nested mappings; missing keys keep their defaults."""
    return _build(Recipe, d, "")


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Nested plain-YAML dict (tuples become lists) that :func:`recipe_from_dict` reads back."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(recipe))


def apply_overrides(d: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any],
                    root: type | None = None) -> dict[str, Any]:
    """Apply ``key=value`` strings (value parsed as YAML: ``method.tau=0.1``, ``data.crop_scale=[0.5,1]``)
    or a mapping of dotted keys to values, checking every key against ``root`` (default :class:`Recipe`)."""
    root = root or Recipe
    keys = set(valid_keys(root))
    if isinstance(overrides, Mapping):
        items = [(str(k), v, None) for k, v in overrides.items()]
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value (e.g. train.epochs=100)")
            key, raw = item.split("=", 1)
            items.append((key.strip(), yaml.safe_load(raw), raw.strip()))
    for key, value, raw in items:
        if key not in keys:
            raise _unknown(key, root)
        *sections, name = key.split(".")
        node = d
        for s in sections:
            node = node.setdefault(s, {})
        if raw is not None and value is not None and not isinstance(value, str) and _accepts_str(key, root):
            value = raw  # YAML would read train.mixed_precision=no as false
        node[name] = value
    return d


def _accepts_str(key: str, root: type | None = None) -> bool:
    cls: Any = root or Recipe
    *sections, name = key.split(".")
    for s in sections:
        cls = typing.get_type_hints(cls)[s]
    hint = typing.get_type_hints(cls)[name]
    return hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} does not exist")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start is not None and (mark is None or start.line != mark.line):
            problem += f" ({context} started at line {start.line + 1})"  # e.g. an unclosed bracket
        raise ValueError(f"recipe file {path} is not valid YAML{where}: {problem}; fix the file there") from None
    if not isinstance(d, Mapping):
        raise ValueError(f"recipe file {path} holds a YAML {type(d).__name__}, not a mapping of sections "
                         f"(model:, method:, data:, dataset:, optim:, train:)")
    return dict(d)


def _leaves(d: Mapping[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, Mapping) and v and prefix.count(".") < 1:  # sections, not dict-valued keys (data.extra)
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def resolve_recipe_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """A recipe file with its ``base:`` chain merged: ``(recipe dict, {dotted key: file that set it})``.

    ``base: <name>`` names another recipe relative to the file's folder, or else one shipped with
    the package (``.yaml`` may be left out, e.g. ``base: d3ssl_r50c4.coco_800ep`` or, from a recipe
    outside the package, ``base: demo``); the file states only what
    differs from it, and each value's source comment lives once, in the file that sets it.
    """
    path = Path(path)
    d = _read_yaml(path)
    base = d.pop("base", None)
    merged: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ValueError(f"recipe file {path}: base must be the name of another recipe, got {base!r}")
        name = base if base.endswith((".yaml", ".yml")) else f"{base}.yaml"
        base_path = path.parent / name
        if not base_path.is_file():  # a recipe shipped with the package, e.g. ``base: demo``
            from d3ssl_zoo.tags import recipes_dir

            packaged = recipes_dir() / name
            if not packaged.is_file():
                raise FileNotFoundError(f"recipe file {path}: its base {base!r} is neither {base_path} nor a "
                                        f"recipe shipped with the package ({packaged}); name a file relative to "
                                        f"{path.parent} or a packaged recipe (d3ssl-zoo list)")
            base_path = packaged
        chain = _chain + (path.resolve(),)
        if base_path.resolve() in chain:
            raise ValueError("recipe bases form a cycle: " + " -> ".join(str(p) for p in chain + (base_path,)))
        merged, origin = resolve_recipe_file(base_path, chain)
    for key, value in _leaves(d):
        section, _, name = key.rpartition(".")
        target = merged.setdefault(section, {}) if section else merged
        if not isinstance(target, dict):
            raise ValueError(f"recipe file {path}: {section} is a section (model:, method:, ...), not a value")
        target[name] = value
        origin[key] = path
    return merged, origin


def load_config(cls: type, path: str | Path | None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Any:
    """The one typed loader of the package: a YAML file of dataclass ``cls`` (with its ``base:``
    chain; ``None``: the defaults), ``key=value`` overrides, every value coerced to its field's type
    (``2e-2`` is a float, not a string) and every unknown key an error that lists the valid ones.
    Pre-training recipes (:class:`Recipe`) and detection recipes use it."""
    d = resolve_recipe_file(path)[0] if path is not None else {}
    return _build(cls, apply_overrides(d, overrides, cls), "", cls)


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe YAML file (with its ``base:`` chain) and apply ``key=value`` overrides."""
    return load_config(Recipe, path, overrides)


def _source_comments(path: Path) -> dict[str, str]:
    """``{dotted key: its source comment}`` of one recipe file (the text after ``  # `` on the key's line)."""
    comments, section = {}, ""
    for line in path.read_text().splitlines():
        body, _, comment = line.partition("  # ")
        if not body.strip() or body.lstrip().startswith("#") or ":" not in body:
            continue
        key = body.split(":", 1)[0]
        if not key.startswith(" "):
            section = key.strip() if body.rstrip().endswith(":") else ""
            if section:
                continue
        comments[f"{section}.{key.strip()}" if key.startswith(" ") and section else key.strip()] = comment.strip()
    return comments


def describe_recipe(path: str | Path, overrides: Iterable[str] = ()) -> str:
    """The recipe fully resolved, as YAML, each value followed by where it came from: the file of the
    ``base:`` chain that sets it (with that file's source comment) or the command-line override."""
    path = Path(path)
    overrides = list(overrides)
    recipe = load_recipe(path, overrides)  # validates everything first
    _, origin = resolve_recipe_file(path)
    comments = {f: _source_comments(f) for f in set(origin.values())}
    overridden = {o.split("=", 1)[0].strip() for o in overrides}
    lines = [f"# {path} resolved" + (f" with {len(overrides)} override(s)" if overrides else "")]
    current = ""
    for key, value in _leaves(recipe_to_dict(recipe)):
        section, _, name = key.rpartition(".")
        if section != current:
            lines.append(f"{section}:")
            current = section
        text = yaml.safe_dump({name: value}, default_flow_style=True, width=10**6).strip()[1:-1]
        if key in overridden:
            where = "override"
        elif key in origin:
            src = origin[key]
            where = f"{os.path.relpath(src, path.parent)}: {comments[src].get(key, '')}".rstrip(": ")
        else:
            where = "default of d3ssl_zoo.engine.config"
        lines.append(f"{'  ' if section else ''}{text}  # {where}")
    return "\n".join(lines) + "\n"
