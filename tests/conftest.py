"""Test setup and the helpers several test files share.

Environment: no network, a private Hugging Face home, small thread count. huggingface_hub reads
HF_HOME / HF_HUB_OFFLINE when it is imported, so they are set here, before any test module imports
it. Tests that need a populated Hub cache build it under ``$HF_HOME/hub`` (see ``tests/test_hub.py``).

Shared helpers are factory fixtures (pytest's "factories as fixtures"): a test or fixture names
``make_tiny_source``, ``tiny_overrides`` or ``write_coco`` as an argument and calls it.
"""
import json
import os
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="d3ssl_zoo_test_hf_")
os.environ.setdefault("D3SSL_ZOO_CACHE", tempfile.mkdtemp(prefix="d3ssl_zoo_test_cache_"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

#: The four object colours of :func:`_write_coco`, one per class.
COCO_COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 220, 40)]


def _make_tiny_source(root: Path, num_images: int = 8, size=(96, 80)) -> tuple[Path, Path]:
    """An image folder of ``num_images`` small random-texture images and a proposal file for it."""
    from PIL import Image

    from d3ssl_zoo.data.proposal_store import ProposalEntry, write_proposal_file

    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    w, h = size
    # ids follow the image folder's order, which sorts names as text (img10.png before img2.png)
    for i, name in enumerate(sorted(f"img{n}.png" for n in range(num_images))):
        img = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).resize((w, h), Image.NEAREST).save(images / name)
        boxes = np.array([[4, 4, 52, 60], [30, 10, 90, 70], [10, 30, 60, 78]], np.float32)
        entries.append(ProposalEntry(i, name, w, h, 0, boxes))
    proposals = root / "proposals.safetensors"
    write_proposal_file(proposals, entries, mode="fast", resize_long=None)
    return images, proposals


def _tiny_overrides(images: Path, proposals: Path) -> list[str]:
    """Recipe overrides that shrink the demo recipe to a few seconds per run on the tiny source."""
    return [f"dataset.source={images}", f"dataset.proposals={proposals}", "data.image_size=64",
            "data.small_size=32", "data.num_proposals=2", "method.proj_hidden_dim=32", "method.proj_dim=16",
            "method.pred_hidden_dim=32", "method.queue_size=48", "train.global_batch=null",
            "train.batch_size=2", "train.epochs=1",
            "train.num_workers=0", "train.tracker=none", "train.checkpoint_every=1", "train.log_every=1",
            "train.keep_last=2", "optim.warmup_epochs=0.5", "optim.base_lr=4.0"]


def _write_coco(root, name="train", num_images=6, hw=(64, 96), seed=0, objects=(1, 3)):
    """Tiny labelled split: noisy backgrounds with coloured, textured rectangles of 4 classes.

    Returns ``(annotation_file, image_dir)``.
    """
    import cv2

    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, name)
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        h, w = hw if i % 2 == 0 else hw[::-1]
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        for _ in range(rng.integers(objects[0], objects[1] + 1)):
            c = int(rng.integers(len(COCO_COLOURS)))
            bw, bh = rng.integers(16, w // 2), rng.integers(16, h // 2)
            x, y = rng.integers(0, w - bw), rng.integers(0, h - bh)
            img[y:y + bh, x:x + bw] = np.array(COCO_COLOURS[c]) + rng.integers(0, 20, (bh, bw, 3))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                         "bbox": [float(x), float(y), float(bw), float(bh)], "area": float(bw * bh)})
        cv2.imwrite(os.path.join(img_dir, f"{i:04d}.png"), img[..., ::-1])
        images.append({"id": i + 1, "file_name": f"{i:04d}.png", "width": w, "height": h})
    cats = [{"id": c + 1, "name": f"class{c}"} for c in range(len(COCO_COLOURS))]
    ann = os.path.join(root, f"{name}.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return ann, img_dir


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, as a data worker runs (two OpenMP threads that spin-wait on a loaded
    2-core machine make tiny steps 10x slower); the earlier count restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_tiny_source():
    """``make_tiny_source(root, num_images=8, size=(96, 80)) -> (images, proposals)``: an image folder
    of small random-texture images under ``root`` and a proposal file with three boxes per image."""
    return _make_tiny_source


@pytest.fixture(scope="session")
def tiny_overrides():
    """``tiny_overrides(images, proposals) -> list[str]``: ``key=value`` overrides that point the demo
    recipe at a tiny source and shrink it (64 px views, 2 proposals, batch 2, one epoch)."""
    return _tiny_overrides


@pytest.fixture(scope="session")
def write_coco():
    """``write_coco(root, name="train", num_images=6, hw=(64, 96), seed=0, objects=(1, 3))
    -> (annotation_file, image_dir)``: a tiny labelled COCO-format split of 4 colour classes."""
    return _write_coco
