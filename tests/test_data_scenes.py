"""The generated scene set: deterministic by seed, boxes that match the pixels, COCO splits."""
import json

import numpy as np
import pytest

from d3ssl_zoo.data import scenes as scenes_mod
from d3ssl_zoo.data.scenes import SHAPES, SceneConfig, get_scene_dataset, render_scene, shape_mask

TINY = SceneConfig(num_pretrain=6, num_train=5, num_val=4, image_size=96, object_size=(32, 48), seed=3)


@pytest.fixture(scope="module")
def photos():
    return scenes_mod._photos()


@pytest.mark.parametrize("name", SHAPES)
def test_shape_masks_fill_their_canvas_and_differ(name):
    m = shape_mask(name, 64, np.random.default_rng(0))
    assert m.shape == (64, 64) and 0 <= m.min() and m.max() <= 1
    solid = m >= 0.5
    ys, xs = np.nonzero(solid)
    # the shape spans most of its canvas and is not a blank square
    assert max(xs.max() - xs.min(), ys.max() - ys.min()) >= 38
    assert 0.1 < solid.mean() < 0.95


def test_shapes_are_distinct_classes():
    masks = {n: shape_mask(n, 64, np.random.default_rng(1)) >= 0.5 for n in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.95, (a, b)


def test_render_scene_is_deterministic_and_boxes_match_pixels(photos):
    cfg = SceneConfig(image_size=128, object_size=(40, 64))
    img, boxes, labels = render_scene(photos, cfg, np.random.default_rng(7))
    img2, boxes2, labels2 = render_scene(photos, cfg, np.random.default_rng(7))
    assert np.array_equal(img, img2) and np.array_equal(boxes, boxes2) and np.array_equal(labels, labels2)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert 1 <= len(labels) <= 4 and boxes.shape == (len(labels), 4)
    assert ((labels >= 0) & (labels < len(SHAPES))).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all()
    assert ((boxes[:, 2] - boxes[:, 0]) >= 8).all() and ((boxes[:, 3] - boxes[:, 1]) >= 8).all()


def test_boxes_are_tight_around_the_pasted_shape():
    # the same scene on a black and on a white background: where the two renders differ by less
    # than half the range, the shape covers the pixel (alpha >= 0.5); its box bounds exactly those
    cfg = SceneConfig(image_size=96, object_size=(40, 56), objects_per_image=(1, 1), clutter=(0, 0))
    for seed in range(5):
        black, boxes, _ = render_scene([np.zeros((200, 200, 3), np.uint8)], cfg, np.random.default_rng(seed))
        white, boxes_w, _ = render_scene([np.full((200, 200, 3), 255, np.uint8)], cfg, np.random.default_rng(seed))
        assert np.array_equal(boxes, boxes_w)
        covered = np.abs(black.astype(int) - white.astype(int)).max(axis=2) < 128
        ys, xs = np.nonzero(covered)
        assert np.allclose(boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)


def test_dataset_builds_deterministically_with_coco_splits(tmp_path):
    a = get_scene_dataset(TINY, tmp_path / "a", workers=1, progress=False)
    b = get_scene_dataset(TINY, tmp_path / "b", workers=1, progress=False)
    for split, n in (("train", 5), ("val", 4)):
        ann = json.loads(getattr(a, f"{split}_ann").read_text())
        assert len(ann["images"]) == n and [c["name"] for c in ann["categories"]] == list(SHAPES)
        assert len(ann["annotations"]) >= n
        for x in ann["annotations"]:
            assert x["bbox"][2] > 0 and x["bbox"][3] > 0 and 1 <= x["category_id"] <= 10
        assert ann == json.loads(getattr(b, f"{split}_ann").read_text())
        for im in ann["images"]:
            assert (getattr(a, f"{split}_images") / im["file_name"]).read_bytes() == \
                (getattr(b, f"{split}_images") / im["file_name"]).read_bytes()
    pre = json.loads(a.pretrain_ann.read_text())
    assert len(pre["images"]) == 6 and pre["annotations"] == []
    assert a.proposals.is_file()
    # train, val and pre-training images all differ (disjoint random streams)
    files = [p.read_bytes() for d in (a.train_images, a.val_images, a.images_dir) for p in sorted(d.iterdir())]
    assert len(set(files)) == len(files)
    # a second call returns the finished set at once
    assert get_scene_dataset(TINY, tmp_path / "a", workers=1, progress=False) == a


def test_other_seed_other_images(tmp_path):
    a = get_scene_dataset(TINY, tmp_path / "a", workers=1, progress=False)
    other = SceneConfig(**{**TINY.__dict__, "seed": 4})
    b = get_scene_dataset(other, tmp_path / "b", workers=1, progress=False)
    assert (a.val_images / "val_00001.png").read_bytes() != (b.val_images / "val_00001.png").read_bytes()


def test_incomplete_folder_is_refused(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(RuntimeError, match="no complete scene dataset"):
        get_scene_dataset(TINY, tmp_path, workers=1, progress=False)


def test_source_spec_parsing():
    assert SceneConfig.from_source("scenes") == SceneConfig()
    c = SceneConfig.from_source("scenes:num_pretrain=64,object_size=24-40,seed=5")
    assert c.num_pretrain == 64 and c.object_size == (24, 40) and c.seed == 5
    with pytest.raises(ValueError, match="bad scene-set option 'bogus=1'.*num_pretrain"):
        SceneConfig.from_source("scenes:bogus=1")
    with pytest.raises(ValueError, match="expected an integer range"):
        SceneConfig.from_source("scenes:object_size=big")
    with pytest.raises(ValueError, match="not a scene-set source"):
        SceneConfig.from_source("coco")


def test_cue_free_scenes_keep_the_layouts_and_drop_instance_appearance(photos):
    cue_free = SceneConfig(**{**TINY.__dict__, "instance_cues": 0})
    assert cue_free == SceneConfig.from_source("scenes:object_size=32-48,image_size=96,seed=3,num_pretrain=6,"
                                               "num_train=5,num_val=4,instance_cues=0")
    for seed in range(4):
        img, boxes, labels = render_scene(photos, TINY, np.random.default_rng(seed))
        flat, flat_boxes, flat_labels = render_scene(photos, cue_free, np.random.default_rng(seed))
        assert np.array_equal(boxes, flat_boxes) and np.array_equal(labels, flat_labels)  # same shapes, same places
        assert not np.array_equal(img, flat)
        # grey: background, fill and clutter carry no colour, and the fill is one value for every instance
        assert (flat[..., 0] == flat[..., 1]).all() and (flat[..., 1] == flat[..., 2]).all()
        for x0, y0, x1, y1 in flat_boxes.astype(int):
            patch = flat[y0:y1, x0:x1, 0]
            assert (patch == scenes_mod.FLAT_FILL[0]).mean() > 0.3  # the fill itself, wherever the shape is opaque


def test_the_default_set_keeps_its_key_and_old_builds_stay_valid(tmp_path):
    assert SceneConfig().key() == "0bbe8b0a65"  # the cache folder of sets built before instance_cues existed
    assert SceneConfig(instance_cues=0).key() != SceneConfig().key()
    a = get_scene_dataset(TINY, tmp_path / "a", workers=1, progress=False)
    marker = a.root / "complete.json"
    saved = json.loads(marker.read_text())
    del saved["config"]["instance_cues"]  # as written before the field existed
    marker.write_text(json.dumps(saved))
    assert get_scene_dataset(TINY, tmp_path / "a", workers=1, progress=False) == a
    with pytest.raises(RuntimeError, match="no complete scene dataset"):
        get_scene_dataset(SceneConfig(**{**TINY.__dict__, "instance_cues": 0}), tmp_path / "a", workers=1,
                          progress=False)
