"""Test session setup: no network, a private Hugging Face home, small thread count.

huggingface_hub reads HF_HOME / HF_HUB_OFFLINE when it is imported, so they are set here,
before any test module imports it. Tests that need a populated Hub cache build it under
``$HF_HOME/hub`` (see ``tests/test_hub.py``).
"""
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="d3ssl_zoo_test_hf_")
os.environ.setdefault("D3SSL_ZOO_CACHE", tempfile.mkdtemp(prefix="d3ssl_zoo_test_cache_"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
