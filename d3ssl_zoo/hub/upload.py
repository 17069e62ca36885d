"""``push_to_hub``: upload a ``save_pretrained`` folder, refusing early and clearly when offline."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from . import download
from .weights import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

__all__ = ["push_to_hub"]


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
    why = download.hub_unreachable(repo_id, CONFIG_NAME, revision)
    if why is not None:
        raise ConnectionError(f"cannot push to the Hub: {constants.ENDPOINT}{download.via_proxy(constants.ENDPOINT)} "
                              f"is unreachable from this machine ({why})")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))

