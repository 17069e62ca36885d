"""Weights in and out, split by responsibility:

* :mod:`~d3ssl_zoo.hub.weights` -- reading weight files safely, sha256, the strict key/shape check;
* :mod:`~d3ssl_zoo.hub.download` -- the Hugging Face Hub (or its cache) and its reachability probe;
* :mod:`~d3ssl_zoo.hub.card` -- the model card (huggingface_hub ``ModelCard``/``ModelCardData``);
* :mod:`~d3ssl_zoo.hub.save` -- ``save_pretrained`` (safetensors + timm ``config.json`` + card);
* :mod:`~d3ssl_zoo.hub.upload` -- ``push_to_hub``.

Weights are safetensors. A ``.pth`` is read with ``torch.load(..., weights_only=True)`` only.
"""
from .download import HubConfigNotCachedError, explain_timm_hub_misses, pretrained_state_dict
from .save import check_save_folder, save_pretrained
from .upload import push_to_hub
from .weights import (
                      CARD_NAME,
                      CONFIG_NAME,
                      WEIGHTS_NAME,
                      PretrainedWeightsError,
                      ResolvedWeights,
                      load_state_dict_file,
                      sha256_file,
                      verify_sha256,
)

__all__ = [
    "PretrainedWeightsError", "WEIGHTS_NAME", "CONFIG_NAME", "CARD_NAME", "ResolvedWeights", "sha256_file",
    "verify_sha256", "load_state_dict_file", "pretrained_state_dict", "save_pretrained", "check_save_folder",
    "push_to_hub", "HubConfigNotCachedError",
]

explain_timm_hub_misses()  # timm.create_model('hf-hub:...') offline and uncached: say which repo and what to do
