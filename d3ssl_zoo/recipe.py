"""The typed recipe loader shared by pre-training and detection: a dataclass read from YAML.

A recipe file names every field of a dataclass once (nested dataclasses are YAML sections, e.g.
``method:`` of :class:`d3ssl_zoo.engine.Recipe`; a flat one such as
:class:`d3ssl_zoo.detection.DetRecipe` has no sections). ``base: <name>`` makes a file state
only what differs from another recipe; ``key=value`` overrides come last. Every value is
coerced to its field's type (``2e-2`` is a float, not a string) and every unknown key is an
:class:`UnknownRecipeKeyError` that lists the valid ones. :func:`describe` prints the resolved
recipe with the file (or override) each value comes from. See ``docs/training.md``.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

__all__ = ["UnknownRecipeKeyError", "valid_keys", "config_from_dict", "config_to_dict", "apply_overrides",
           "resolve_recipe_file", "load_config", "describe"]


class UnknownRecipeKeyError(ValueError):
    """A recipe file or override names a key that is not a recipe field."""


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a recipe of dataclass ``cls`` accepts, e.g. ``method.tau``."""
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


def _unknown(key: str, root: type) -> UnknownRecipeKeyError:
    keys = valid_keys(root)
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


def _build(cls: type, d: Mapping[str, Any], prefix: str, root: type) -> Any:
    if not isinstance(d, Mapping):
        raise TypeError(f"recipe section {prefix.rstrip('.') or '<root>'} must be a mapping, got {d!r}")
    fields = dict((f.name, hint) for f, hint in _fields(cls))
    for k in d:
        if k not in fields:
            raise _unknown(prefix + str(k), root)
    kwargs = {}
    for name, value in d.items():
        hint = fields[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{prefix}{name}.", root)
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def config_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """Build dataclass ``cls`` from nested mappings; missing keys keep their defaults."""
    return _build(cls, d, "", cls)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain-YAML dict (tuples become lists) that :func:`config_from_dict` reads back."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(config))


def apply_overrides(d: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any], cls: type) -> dict[str, Any]:
    """Apply ``key=value`` strings (value parsed as YAML: ``method.tau=0.1``, ``data.crop_scale=[0.5,1]``)
    or a mapping of dotted keys to values to the recipe dict ``d``, checking every key against ``cls``."""
    keys = set(valid_keys(cls))
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
            raise _unknown(key, cls)
        *sections, name = key.split(".")
        node = d
        for s in sections:
            node = node.setdefault(s, {})
        if raw is not None and value is not None and not isinstance(value, str) and _accepts_str(key, cls):
            value = raw  # YAML would read train.mixed_precision=no as false
        node[name] = value
    return d


def _accepts_str(key: str, cls: type) -> bool:
    *sections, name = key.split(".")
    for s in sections:
        cls = typing.get_type_hints(cls)[s]
    hint = typing.get_type_hints(cls)[name]
    return hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint))


def _layout(cls: type | None) -> str:
    """What the top level of a recipe file of ``cls`` holds, for the error of a file that is no mapping."""
    if cls is None:
        return "recipe keys"
    sections = [f.name for f, hint in _fields(cls) if dataclasses.is_dataclass(hint)]
    if sections:
        return f"sections ({', '.join(s + ':' for s in sections)})"
    names = [f.name for f in dataclasses.fields(cls)]
    return f"recipe keys ({', '.join(n + ':' for n in names[:4])} ...)"


def _read_yaml(path: Path, cls: type | None = None) -> dict[str, Any]:
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
        raise ValueError(f"recipe file {path} holds a YAML {type(d).__name__}, not a mapping of {_layout(cls)}")
    return dict(d)


def _leaves(d: Mapping[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, Mapping) and v and prefix.count(".") < 1:  # sections, not dict-valued keys (data.extra)
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def resolve_recipe_file(path: str | Path, cls: type | None = None,
                        _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """A recipe file with its ``base:`` chain merged: ``(recipe dict, {dotted key: file that set it})``.

    ``base: <name>`` names another recipe relative to the file's folder, or else one shipped with
    the package in ``d3ssl_zoo/recipes/`` (``.yaml`` may be left out, e.g. ``base: d3ssl_r50c4.coco_800ep``
    or, from a recipe outside the package, ``base: demo``); the file states only what differs from
    it, and each value's source comment lives once, in the file that sets it. ``cls``, when given,
    only words the error for a file that is not a mapping.
    """
    path = Path(path)
    d = _read_yaml(path, cls)
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
        merged, origin = resolve_recipe_file(base_path, cls, chain)
    for key, value in _leaves(d):
        section, _, name = key.rpartition(".")
        target = merged.setdefault(section, {}) if section else merged
        if not isinstance(target, dict):
            raise ValueError(f"recipe file {path}: {section} is a section (model:, method:, ...), not a value")
        target[name] = value
        origin[key] = path
    return merged, origin


def load_config(cls: type, path: str | Path | None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Any:
    """A recipe of dataclass ``cls``: the YAML file ``path`` with its ``base:`` chain (``None``: the
    defaults), then ``key=value`` overrides, every value coerced to its field's type and every
    unknown key an :class:`UnknownRecipeKeyError` that lists the valid ones."""
    d = resolve_recipe_file(path, cls)[0] if path is not None else {}
    return _build(cls, apply_overrides(d, overrides, cls), "", cls)


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


def describe(cls: type, path: str | Path, overrides: Iterable[str] = ()) -> str:
    """The recipe of ``cls`` in ``path`` fully resolved, as YAML, each value followed by where it came
    from: the file of the ``base:`` chain that sets it (with that file's source comment), the
    command-line override, or the dataclass default (named by the module that defines ``cls``)."""
    path = Path(path)
    overrides = list(overrides)
    config = load_config(cls, path, overrides)  # validates everything first
    _, origin = resolve_recipe_file(path, cls)
    comments = {f: _source_comments(f) for f in set(origin.values())}
    overridden = {o.split("=", 1)[0].strip() for o in overrides}
    lines = [f"# {path} resolved" + (f" with {len(overrides)} override(s)" if overrides else "")]
    current = ""
    for key, value in _leaves(config_to_dict(config)):
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
            where = f"default of {cls.__module__}"
        lines.append(f"{'  ' if section else ''}{text}  # {where}")
    return "\n".join(lines) + "\n"
