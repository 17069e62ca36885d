"""Selective-search modes: OpenCV's own modes unchanged, and ``soco``, SoCo's single configuration."""
import argparse

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage.segmentation import felzenszwalb
from skimage.util import img_as_float

import d3ssl_zoo.data.selective_search as tool
from d3ssl_zoo.data.proposal_store import ProposalStore
from d3ssl_zoo.data.selective_search import (
    DEFAULT_RESIZE_LONG,
    MODES,
    SOCO_SEGMENTATION,
    SOCO_WEIGHTS,
    selective_search,
    soco_strategy,
)

seg = cv2.ximgproc.segmentation


def photo(long_side=None):
    img = skimage.data.chelsea()  # 451 x 300
    if long_side:
        h, w = img.shape[:2]
        img = cv2.resize(img, (round(w * long_side / w), round(h * long_side / w)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def box_set(boxes):
    return np.unique(np.asarray(boxes, np.float32).reshape(-1, 4), axis=0)


def opencv_as_configured(img_rgb, switch):
    """OpenCV's own configuration on the BGR image at the image's size, as xyxy boxes."""
    ss = seg.createSelectiveSearchSegmentation()
    ss.setBaseImage(cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
    getattr(ss, switch)()
    r = np.asarray(ss.process(), np.float32).reshape(-1, 4)
    return np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], axis=1)


@pytest.mark.parametrize("mode,switch", [("fast", "switchToSelectiveSearchFast"),
                                         ("single", "switchToSingleStrategy"),
                                         ("quality", "switchToSelectiveSearchQuality")])
def test_opencv_modes_are_opencv_configurations_unchanged(mode, switch):
    img = photo(96)
    ours = box_set(selective_search(img, mode, None))
    assert len(ours) > 5
    np.testing.assert_array_equal(ours, box_set(opencv_as_configured(img, switch)))
    assert DEFAULT_RESIZE_LONG[mode] == 500


def test_default_size_is_500_px_for_fast_and_full_resolution_for_soco():
    img = photo(120)
    assert box_set(selective_search(img)).tolist() == box_set(selective_search(img, "fast", 500)).tolist()
    full = box_set(selective_search(img, "soco"))
    assert full.tolist() == box_set(selective_search(img, "soco", None)).tolist()
    assert full.tolist() != box_set(selective_search(img, "soco", 60)).tolist()


def test_soco_mode_is_one_segmentation_and_one_weighted_similarity_on_rgb():
    assert SOCO_SEGMENTATION == {"sigma": 0.9, "k": 300.0, "min_size": 100}
    assert SOCO_WEIGHTS == {"color": 1.0, "texture": 3.0, "size": 1.0, "fill": 1.0}
    img = photo(200)
    ss = seg.createSelectiveSearchSegmentation()
    ss.addImage(img)
    ss.addGraphSegmentation(seg.createGraphSegmentation(0.9, 300, 100))
    m = seg.createSelectiveSearchSegmentationStrategyMultiple()
    m.addStrategy(seg.createSelectiveSearchSegmentationStrategyColor(), 1)
    m.addStrategy(seg.createSelectiveSearchSegmentationStrategyTexture(), 3)
    m.addStrategy(seg.createSelectiveSearchSegmentationStrategySize(), 1)
    m.addStrategy(seg.createSelectiveSearchSegmentationStrategyFill(), 1)
    ss.addStrategy(m)
    r = np.asarray(ss.process(), np.float32).reshape(-1, 4)
    expected = box_set(np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], axis=1))
    boxes = selective_search(img, "soco")
    np.testing.assert_array_equal(box_set(boxes), expected)
    h, w = img.shape[:2]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert ((boxes[:, 2:] > boxes[:, :2]).all()) and np.array_equal(boxes, np.round(boxes))  # full-res pixels
    # one hierarchy over one segmentation: fewer boxes than OpenCV's fast mode (2 images x 3 k x 2 strategies)
    assert len(box_set(boxes)) < len(box_set(selective_search(img, "fast", None)))


def test_opencv_k_300_on_0_255_matches_skimage_scale_300_on_0_1():
    """skimage divides ``scale`` by 255 and segments [0, 1] floats: OpenCV's k = 300 on 0-255 values
    gives about the same number of segments, k = 300 / 255 many times more."""
    img = photo()
    sk = int(felzenszwalb(img_as_float(img), scale=300, sigma=0.9, min_size=100).max()) + 1
    cv = int(seg.createGraphSegmentation(**SOCO_SEGMENTATION).processImage(img).max()) + 1
    tiny_k = int(seg.createGraphSegmentation(0.9, 300 / 255, 100).processImage(img).max()) + 1
    assert abs(cv - sk) <= 0.25 * sk, (cv, sk)
    assert tiny_k > 3 * sk


def test_bad_modes_weights_and_sizes_are_refused():
    img = photo(64)
    with pytest.raises(ValueError, match="mode must be one of"):
        selective_search(img, "slow")
    with pytest.raises(ValueError, match="'auto'"):
        selective_search(img, "soco", "full")
    with pytest.raises(ValueError, match="weight >= 0"):
        soco_strategy({"color": 1.0, "texture": 1.0, "size": 1.0})
    with pytest.raises(ValueError, match="weight >= 0"):
        soco_strategy({"color": 1.0, "texture": -1.0, "size": 1.0, "fill": 1.0})
    with pytest.raises(ValueError, match="weight >= 0"):
        selective_search(img, "soco", soco_weights={"color": 0, "texture": 0, "size": 0, "fill": 0})
    assert "soco" in MODES


def test_cli_mode_soco_runs_at_full_resolution_and_fast_at_500(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(photo(80)).save(root / "a.png")
    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    for mode, extra, expected in (("soco", [], "None"), ("fast", [], "500"), ("soco", ["--resize-long", "40"], "40")):
        out = tmp_path / f"{mode}{len(extra)}.safetensors"
        rc = tool.run(p.parse_args(["--images", str(root), "--out", str(out), "--mode", mode, "--workers", "1",
                                    "--no-progress", *extra]))
        store = ProposalStore(out)
        assert rc == 0 and store.metadata["mode"] == mode and store.metadata["resize_long"] == expected
        assert len(store[int(store.image_ids[0])]) >= 1
