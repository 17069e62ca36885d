"""Weights in and out: safe loading, the Hugging Face Hub, save_pretrained and push_to_hub.

Weights are safetensors. A ``.pth`` is read with ``torch.load(..., weights_only=True)`` only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from .tags import LICENSE, PAPER_ARXIV, PAPER_TITLE, get_tag, recipe_path, tag_for_hub_id

__all__ = [
    "PretrainedWeightsError", "WEIGHTS_NAME", "CONFIG_NAME", "sha256_file", "verify_sha256",
    "load_state_dict_file", "pretrained_state_dict", "save_pretrained", "push_to_hub",
]

_logger = logging.getLogger(__name__)

# Seconds the Hub probe waits to connect or read; the probe is not retried.
_PROBE_TIMEOUT = 3.0

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
# pretrained_cfg fields that are ours to write into config.json (all are timm PretrainedCfg fields;
# an unknown key there breaks ``timm.create_model('hf-hub:...')``).
_CONFIG_CFG_KEYS = ("tag", "input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
                    "num_classes", "pool_size", "first_conv", "classifier", "license", "paper_ids",
                    "paper_name")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be found, read, or verified."""


def sha256_file(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: os.PathLike | str, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise PretrainedWeightsError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, actual {actual}. The file is "
            f"corrupted or not the published one; delete it (and its Hugging Face cache entry) and retry.")


def load_state_dict_file(path: os.PathLike | str) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or (safely) from a ``.pth``/``.pt``/``.bin``.

    A ``.pth`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped. Raises
    ``PretrainedWeightsError`` naming the file for anything unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for every corruption
            raise PretrainedWeightsError(
                f"cannot read {path}: not a valid safetensors file (corrupted or truncated?): {e}") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise PretrainedWeightsError(
            f"cannot read {path} with torch.load(weights_only=True) (corrupted, truncated, or a pickle "
            f"holding more than tensors): {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


@dataclass
class ResolvedWeights:
    """A state dict fetched for a pretrained cfg, and where it came from."""

    state_dict: Dict[str, torch.Tensor]
    path: str
    source: str

    def check_keys(self, state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        """timm filter fn: strict key check, except the classifier, which is adapted.

        timm loads non-strictly whenever the classifier changes size; we keep everything else
        strict so nothing is silently left at random init or dropped.
        """
        expected = set(model.state_dict().keys())
        classifier = {k for k in expected | set(state_dict) if k.startswith("fc.")}
        missing = sorted(expected - set(state_dict) - classifier)
        unexpected = sorted(set(state_dict) - expected - classifier)
        if missing or unexpected:
            raise PretrainedWeightsError(
                f"{self.path} does not match the model: missing keys {_short(missing)}, unexpected keys "
                f"{_short(unexpected)}. For checkpoints in SoCo/MoCo/DenseCL/PixPro layouts convert first: "
                f"d3ssl-zoo convert {self.path} --out DIR")
        own = model.state_dict()
        wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in state_dict.items()
                 if k in own and not k.startswith("fc.") and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise PretrainedWeightsError(
                f"{self.path} does not fit this architecture: {len(wrong)} tensors have other shapes "
                f"({_short(wrong, 3)}). It was saved from another model; load it with the architecture it "
                f"was trained as (`d3ssl-zoo convert {self.path} --out DIR` reports it)")
        dropped = sorted(k for k in state_dict if k.startswith("fc.") and k not in expected)
        if dropped:
            _logger.info("Not loading classifier %s from %s: the model is headless", dropped, self.path)
        return {k: v for k, v in state_dict.items() if k in expected}


def _short(keys: Iterable[str], n: int = 6) -> str:
    keys = list(keys)
    return "[]" if not keys else "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"


def _hub_unreachable(repo_id: str, filename: str, revision: Optional[str] = None) -> Optional[str]:
    """Why the Hub gives no usable answer for this file, or ``None`` when it answers.

    One HEAD through huggingface_hub's own session, so ``HTTPS_PROXY``/``NO_PROXY``, ``HF_ENDPOINT``
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


def _via_proxy(url: str) -> str:
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
    why = None if offline else _hub_unreachable(repo, filename, revision or None)
    if why is not None:
        offline = True  # the local cache only: a cached snapshot loads with no network at all
        where = f"the Hub ({constants.ENDPOINT}{_via_proxy(constants.ENDPOINT)}) is unreachable ({why}) and"
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


def _model_card(name: str, cfg: Mapping[str, Any], card_extra: Optional[Mapping[str, Any]]) -> str:
    tag = get_tag(name)
    extra = dict(card_extra or {})
    lines = [
        "---",
        "library_name: timm",
        f"license: {cfg.get('license', LICENSE)}",
        "tags:", "- image-feature-extraction", "- timm", "- self-supervised", "- d3ssl_zoo",
        "---", "",
        f"# {name}", "",
        f"A ResNet-C4 backbone from *{PAPER_TITLE}* ({PAPER_ARXIV}), in the timm/torchvision ResNet "
        f"layout (headless: `num_classes=0`).", "",
        "## Usage", "", "```python",
        "import timm, d3ssl_zoo  # importing d3ssl_zoo registers the architecture in timm",
        f"model = timm.create_model('hf-hub:<this repo>', pretrained=True)",
        "emb = model.forward_regions(images, boxes)  # RoIAlign on C4 -> res5 -> pool",
        "```", "",
    ]
    if tag is not None:
        lines += ["## Provenance", "",
                  f"* Pre-training data: {tag.dataset}, {tag.epochs} epochs",
                  f"* Paper source: {tag.source}",
                  f"* Recipe: `{tag.recipe}`"]
        if tag.remark:
            lines.append(f"* Note: {tag.remark}")
        lines += ["", "## Numbers reported in the paper", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in tag.reported.items()]
        lines.append("")
    if extra:
        lines += ["## This checkpoint", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in extra.items()]
        lines.append("")
    lines += ["## Citation", "", "```bibtex",
              "@inproceedings{qiu2023d3ssl,",
              f"  title={{{PAPER_TITLE}}},",
              "  author={Qiu, Congpei and Zhang, Tong and Ke, Wei and Salzmann, Mathieu and S{\\\"u}sstrunk, Sabine},",
              "  journal={arXiv preprint arXiv:2303.16947},", "  year={2023}", "}", "```", ""]
    return "\n".join(lines)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(model: nn.Module, out_dir: os.PathLike | str, tag: Optional[str] = None, *,
                    model_name: Optional[str] = None,
                    card_extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model.safetensors``, a timm ``config.json`` and a ``README.md`` model card.

    The folder loads with ``timm.create_model('hf-hub:<repo>')`` once pushed, and locally with
    ``create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=<folder>/model.safetensors))``.
    """
    from safetensors.torch import save_file

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    arch = model_name or cfg.get("architecture")
    if not arch:
        raise ValueError("save_pretrained: cannot tell the architecture; pass model_name='d3ssl_r50c4' (or similar)")
    if "." in arch:
        arch, _, name_tag = arch.partition(".")
        tag = tag or name_tag
    tag = tag if tag is not None else cfg.get("tag")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))

    num_classes = int(getattr(model, "num_classes", 0) or 0)
    pretrained_cfg = {k: cfg[k] for k in _CONFIG_CFG_KEYS if cfg.get(k) is not None}
    pretrained_cfg.update(num_classes=num_classes, tag=tag or "", license=cfg.get("license", LICENSE),
                          paper_ids=PAPER_ARXIV)
    pretrained_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in pretrained_cfg.items()}
    config = {"architecture": arch, "num_classes": num_classes,
              "num_features": int(getattr(model, "num_features", 0)), "pretrained_cfg": pretrained_cfg}
    text = json.dumps(config, indent=2) + "\n"
    _atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(text))
    name = f"{arch}.{tag}" if tag else arch
    card = _model_card(name, pretrained_cfg, card_extra)
    _atomic_write(out / CARD_NAME, lambda p: Path(p).write_text(card))
    return out


def push_to_hub(folder: os.PathLike | str, repo_id: str, *, token: Optional[str] = None, private: bool = False,
                revision: Optional[str] = None, commit_message: str = "Upload d3ssl_zoo checkpoint") -> str:
    """Upload a ``save_pretrained`` folder to the Hub; returns the commit URL."""
    from huggingface_hub import HfApi, constants

    folder = Path(folder)
    missing = [n for n in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a save_pretrained folder: missing {missing}")
    if constants.HF_HUB_OFFLINE:
        raise ConnectionError("cannot push to the Hub: HF_HUB_OFFLINE is set; unset it or use --dry-run")
    why = _hub_unreachable(repo_id, CONFIG_NAME, revision)
    if why is not None:
        raise ConnectionError(f"cannot push to the Hub: {constants.ENDPOINT}{_via_proxy(constants.ENDPOINT)} "
                              f"is unreachable from this machine ({why})")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))

