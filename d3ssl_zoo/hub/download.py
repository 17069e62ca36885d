"""Pretrained weights from the Hugging Face Hub (or its local cache), with a fast, proxy-aware
reachability probe and one clear error for every way a download can fail."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

from huggingface_hub.errors import LocalEntryNotFoundError

from ..tags import get_tag, recipe_path, tag_for_hub_id
from .weights import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainedWeightsError,
    ResolvedWeights,
    load_state_dict_file,
    verify_sha256,
)

__all__ = ["pretrained_state_dict", "hub_unreachable", "via_proxy", "HubConfigNotCachedError",
           "explain_timm_hub_misses"]

# Seconds the Hub probe waits to connect or read; the probe is not retried.
_PROBE_TIMEOUT = 3.0


def hub_unreachable(repo_id: str, filename: str, revision: Optional[str] = None) -> Optional[str]:
    """Why the Hub gives no usable answer for this file, or ``None`` when it answers.

    One HEAD through huggingface_hub's own HTTP client, so ``HTTPS_PROXY``/``NO_PROXY``, ``HF_ENDPOINT``
    and the token apply, with a short timeout and no retry: a dead network or proxy then fails in
    seconds instead of after huggingface_hub's ~23 s backoff loop. An HTTP error of the Hub itself
    (missing or gated repo) is an answer: ``hf_hub_download`` reports it.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), timeout=_PROBE_TIMEOUT)
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status is None or status >= 500 or status in (408, 429):
            return f"HTTP {status}: {_first_sentence(e)}"
        return None
    except Exception as e:  # connection, proxy, TLS, timeout, a mirror that is not a Hub: no usable answer
        return f"{type(e).__name__}: {_first_sentence(e)}"
    return None


def via_proxy(url: str) -> str:
    """`` through proxy <url>`` when the environment routes ``url`` through one (for error messages)."""
    from urllib.request import getproxies, proxy_bypass

    parts = urlparse(url)
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    return f" through proxy {proxy}" if proxy and not proxy_bypass(parts.hostname or "") else ""


def _unavailable(cfg: Mapping[str, Any], reason: str) -> PretrainedWeightsError:
    arch = cfg.get("architecture") or "model"
    name = f"{arch}.{cfg['tag']}" if cfg.get("tag") else arch
    hub_id = cfg.get("hf_hub_id")
    tag = get_tag(name) or (tag_for_hub_id(hub_id) if hub_id else None)
    lines = [f"Pretrained weights for '{name}' are not available: {reason}."]
    if tag is not None:
        state = "published" if tag.published else "not published yet (see `d3ssl-zoo list`)"
        lines.append(f"These weights are {state}. Reproduce them with "
                     f"`accelerate launch train/pretrain.py --recipe {tag.name}` ({tag.recipe}).")
    else:
        lines.append(f"Train a backbone with `accelerate launch train/pretrain.py` ({recipe_path('demo')}).")
    lines.append(f"To load a local file: d3ssl_zoo.create_model('{name}', pretrained=True, "
                 f"pretrained_cfg_overlay=dict(file='/path/to/model.safetensors')), or use "
                 f"pretrained=False for random weights.")
    return PretrainedWeightsError("\n".join(lines))


def _first_sentence(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text.split(". ")[0].rstrip(".")


def _download(cfg: Mapping[str, Any], cache_dir: Optional[str]) -> str:
    from huggingface_hub import constants, hf_hub_download

    repo, _, revision = cfg["hf_hub_id"].partition("@")
    filename = cfg.get("hf_hub_filename") or WEIGHTS_NAME
    offline = constants.HF_HUB_OFFLINE
    why = None if offline else hub_unreachable(repo, filename, revision or None)
    if why is not None:
        offline = True  # the local cache only: a cached snapshot loads with no network at all
        where = f"the Hub ({constants.ENDPOINT}{via_proxy(constants.ENDPOINT)}) is unreachable ({why}) and"
    else:
        where = "HF_HUB_OFFLINE is set and" if offline else "the Hub answered, but"
    try:
        return hf_hub_download(repo, filename, revision=revision or None, cache_dir=cache_dir,
                               local_files_only=offline)
    except Exception as e:  # every huggingface_hub failure becomes one clear error
        raise _unavailable(
            cfg, f"{where} '{filename}' of Hub repo '{repo}' could not be fetched "
                 f"({type(e).__name__}: {_first_sentence(e)})") from e


def pretrained_state_dict(cfg: Mapping[str, Any], cache_dir: Optional[str] = None) -> ResolvedWeights:
    """Fetch and check the weights a timm pretrained cfg points at.

    Order: an explicit ``file`` (``pretrained_cfg_overlay=dict(file=...)``), then the Hub (or its
    local cache). The sha256 of a Hub file is verified when the tag table has one.
    """
    if cfg.get("state_dict"):
        return ResolvedWeights(dict(cfg["state_dict"]), "<state_dict>", "state_dict")
    if cfg.get("file"):
        path = str(cfg["file"])
        if Path(path).is_dir():
            path = str(Path(path) / WEIGHTS_NAME)
        return ResolvedWeights(load_state_dict_file(path), path, "file")
    if not cfg.get("hf_hub_id"):
        raise _unavailable(cfg, "this architecture has no published weights")
    path = _download(cfg, cache_dir)
    tag = tag_for_hub_id(cfg["hf_hub_id"])
    if tag is not None and tag.sha256:
        verify_sha256(path, tag.sha256)
    return ResolvedWeights(load_state_dict_file(path), path, "hf-hub")




class HubConfigNotCachedError(PretrainedWeightsError, LocalEntryNotFoundError):
    """``timm.create_model('hf-hub:<repo>')`` found the repo's config.json neither on the Hub nor in the
    local cache. Both a ``PretrainedWeightsError`` and huggingface_hub's ``LocalEntryNotFoundError``."""


def _config_not_cached(model_id: str) -> str:
    from huggingface_hub import constants

    repo = model_id.partition("@")[0]
    if constants.HF_HUB_OFFLINE:
        why = ("the Hub is offline (HF_HUB_OFFLINE is set) and it is not in the local cache "
               f"({constants.HF_HUB_CACHE}); unset HF_HUB_OFFLINE to download it once")
    else:
        why = (f"the Hub ({constants.ENDPOINT}{via_proxy(constants.ENDPOINT)}) could not be reached and it is not "
               f"in the local cache ({constants.HF_HUB_CACHE})")
    return (f"timm.create_model('hf-hub:{model_id}'): cannot load {CONFIG_NAME} of Hub repo '{repo}': {why}.\n"
            f"To load a local save_pretrained folder instead: timm.create_model('local-dir:/path/to/folder', "
            f"pretrained=True) or d3ssl_zoo.load_backbone('/path/to/folder'); a weights file: "
            f"d3ssl_zoo.create_model('<architecture>', pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='/path/to/model.safetensors')).")


def explain_timm_hub_misses() -> None:
    """Make ``timm.create_model('hf-hub:<repo>')`` raise :class:`HubConfigNotCachedError` (the repo id, why,
    and how to load a local file) instead of huggingface_hub's bare cache miss when the repo's config.json
    can be neither downloaded nor found in the cache.

    timm reads that config.json before any code of the zoo runs and has no hook for it, so this wraps
    timm's reader (``timm.models._factory.load_model_config_from_hf``); every other outcome, for any
    repo, is timm's unchanged. Called once when ``d3ssl_zoo`` is imported.
    """
    from timm.models import _factory

    original = getattr(_factory, "load_model_config_from_hf", None)
    if original is None or getattr(original, "_explains_misses", False):
        return

    @functools.wraps(original)
    def load_model_config_from_hf(model_id: str, *args, **kwargs):
        try:
            return original(model_id, *args, **kwargs)
        except LocalEntryNotFoundError as e:
            raise HubConfigNotCachedError(_config_not_cached(model_id)) from e

    load_model_config_from_hf._explains_misses = True
    _factory.load_model_config_from_hf = load_model_config_from_hf
