"""Image decoding, dataset sources, the contract's build_pretrain_dataset, and the sample."""
import json
import pickle

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from d3ssl_zoo.data import (
    PretrainCollator,
    PretrainDataConfig,
    build_pretrain_dataset,
    load_rgb,
    prepare_batch,
    pretrain_loader,
    source_records,
)
from d3ssl_zoo.data.coco_json import coco_records
from d3ssl_zoo.data.datasets import data_worker_init
from d3ssl_zoo.data.images import decode_rgb, folder_records
from d3ssl_zoo.data.proposal_store import ProposalEntry, ProposalStore, write_proposal_file
from d3ssl_zoo.data.sample import SAMPLE_VERSION, default_cache_dir, get_sample_dataset
from d3ssl_zoo.data.views import crop_reduction, make_views, plan_crop
from d3ssl_zoo.engine import EpochShuffleSampler

CFG = PretrainDataConfig(image_size=64, small_size=32)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA"])
def test_load_rgb_converts_modes(tmp_path, mode):
    a = np.random.default_rng(0).integers(0, 255, (20, 30, 3)).astype(np.uint8)
    im = Image.fromarray(a)
    if mode == "I;16":
        im = Image.fromarray(a[..., 0].astype(np.uint16) * 257)
    else:
        im = im.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    if mode == "I;16":
        assert Image.open(path).mode.startswith("I;16")
    out = load_rgb(path)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if mode == "I;16":
        assert np.abs(out[..., 0].astype(int) - a[..., 0]).max() <= 1  # 16-bit scaled, not clipped


def test_load_rgb_truncated_names_file(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_rgb(path)


def make_source(tmp_path, n=3):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"sub/b{i}.png" if i % 2 else f"a{i}.jpg" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)).save(root / name)
    records = folder_records(root)
    entries = [ProposalEntry(r.image_id, r.file_name, 64, 48, 0, np.array([[2, 2, 40, 30], [20, 10, 60, 45]],
                                                                          np.float32)) for r in records]
    return root, records, entries


def test_folder_dataset_samples_and_seeds(tmp_path):
    root, records, entries = make_source(tmp_path)
    assert [r.file_name for r in records] == sorted(r.file_name for r in records)
    prop = tmp_path / "p.safetensors"
    write_proposal_file(prop, entries, mode="fast", resize_long=500)
    ds = build_pretrain_dataset(CFG, root, prop, seed=1)
    assert len(ds) == 3
    a, b = ds[1], ds[1]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ds.set_epoch(1)
    c = ds[1]
    assert not np.array_equal(a["x2"], c["x2"])
    other = build_pretrain_dataset(CFG, root, prop, seed=2)
    assert not np.array_equal(other[1]["x2"], a["x2"])
    ds2 = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a copy
    ds2.set_epoch(0)
    ds.set_epoch(0)
    assert np.array_equal(ds2[2]["x1"], ds[2]["x1"])
    # the engine's (epoch, index) keys carry the epoch: no set_epoch state needed (persistent workers)
    assert all(np.array_equal(ds[(1, 1)][k], c[k]) for k in c) and np.array_equal(ds[(0, 1)]["x2"], a["x2"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=PretrainCollator(CFG))
    batch = prepare_batch(next(iter(loader)), CFG.mean, CFG.std)
    assert batch["x3"].shape == (2, 3, 64, 64) and batch["image_id"].tolist() == [0, 1]


def _epochs(loader, sampler, epochs=2):
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def test_persistent_workers_see_the_same_samples_as_the_main_process(tmp_path):
    root, records, entries = make_source(tmp_path, n=4)
    prop = tmp_path / "p.safetensors"
    write_proposal_file(prop, entries, mode="fast", resize_long=500)
    ds = build_pretrain_dataset(CFG, root, prop, seed=3)
    sampler0, sampler2 = EpochShuffleSampler(4, 3), EpochShuffleSampler(4, 3)
    loader2 = pretrain_loader(ds, CFG, 2, sampler2, 2)
    assert loader2.persistent_workers and loader2.worker_init_fn is data_worker_init
    inline = _epochs(pretrain_loader(ds, CFG, 2, sampler0, 0), sampler0)
    workers = _epochs(loader2, sampler2)
    for e in range(2):
        for a, b in zip(inline[e], workers[e]):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the epoch reached the workers that outlived epoch 0: epoch 1 has other views
    assert not torch.equal(workers[0][0]["x2"], workers[1][0]["x2"])


class _Threads(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return cv2.getNumThreads()


@pytest.mark.slow
def test_data_workers_run_one_opencv_thread():
    # spawn: a fresh worker starts with OpenCV's default pool (all cores) unless the init sets it
    loader = torch.utils.data.DataLoader(_Threads(), batch_size=1, num_workers=1, worker_init_fn=data_worker_init,
                                         multiprocessing_context="spawn")
    assert [int(t) for t in loader] == [1, 1]


def _jpeg(path, width, height, seed=0):
    """A smooth colour image (no detail finer than the reduced decode can keep), saved as JPEG."""
    coarse = np.random.default_rng(seed).integers(0, 255, (6, 8, 3)).astype(np.uint8)
    Image.fromarray(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)).save(path, quality=95)
    return path


def test_decode_rgb_reduces_jpegs_only(tmp_path):
    jpg = _jpeg(tmp_path / "a.jpg", 257, 193)
    full, half, quarter = decode_rgb(jpg), decode_rgb(jpg, 2), decode_rgb(jpg, 4)
    assert full.image.shape == (193, 257, 3) and full.reduce == 1
    assert half.image.shape == (97, 129, 3) and half.reduce == 2 and half.stored_size == (257, 193)
    assert quarter.image.shape == (49, 65, 3) and quarter.reduce == 4
    assert np.array_equal(decode_rgb(jpg, 2).image, half.image)  # deterministic
    # the same picture: the reduced decode is close to the full one shrunk by area
    area = cv2.resize(full.image[:192, :256], (128, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(half.image[:96, :128].astype(int) - area).mean() < 2
    png = tmp_path / "a.png"
    Image.fromarray(full.image).save(png)
    assert decode_rgb(png, 4).reduce == 1 and decode_rgb(png, 4).image.shape == (193, 257, 3)
    with pytest.raises(ValueError, match="reduce must be 1, 2, 4 or 8"):
        decode_rgb(jpg, 3)


def test_dataset_decodes_jpegs_as_reduced_as_each_crop_allows_with_scaled_proposals(tmp_path, monkeypatch):
    # PRC's side rule: its cutouts move by a pixel with the boxes' rounding; the area rule's restore (a box cut
    # beyond s is uncut whole) can flip on that rounding, which would hide what this test compares
    cfg = PretrainDataConfig(image_size=32, small_size=16, prc_rule="side")
    root = tmp_path / "imgs"
    root.mkdir()
    sizes = {"half.jpg": (256, 192), "quarter.jpg": (512, 384), "whole.png": (512, 384)}
    for i, (name, (w, h)) in enumerate(sizes.items()):
        if name.endswith(".jpg"):
            _jpeg(root / name, w, h, seed=i)
        else:
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / name)
    records = folder_records(root)
    # four large proposals that every x2 crop overlaps: no crop is re-drawn at either scale
    boxes = {r.image_id: np.array([[0.05, 0.05, 0.6, 0.6], [0.4, 0.05, 0.95, 0.6], [0.05, 0.4, 0.6, 0.95],
                                   [0.4, 0.4, 0.95, 0.95]], np.float32) * np.tile(sizes[r.file_name], 2)
             for r in records}
    prop = tmp_path / "p.safetensors"
    write_proposal_file(prop, [ProposalEntry(r.image_id, r.file_name, *sizes[r.file_name], 0, boxes[r.image_id])
                               for r in records], mode="fast", resize_long=500)
    ds = build_pretrain_dataset(cfg, root, prop, seed=0)
    calls = []

    def spy(path, reduce=1):
        out = decode_rgb(path, reduce)
        calls.append((path.rsplit("/", 1)[-1], out.image.shape[:2]))
        return out

    monkeypatch.setattr("d3ssl_zoo.data.datasets.decode_rgb", spy)
    samples = {r.file_name: ds[(0, i)] for i, r in enumerate(ds.records)}
    monkeypatch.undo()
    want = {}
    for i, r in enumerate(ds.records):  # the factor each sample's own x2 crop allows (a JPEG only)
        w, h = sizes[r.file_name]
        crop, _ = plan_crop(boxes[r.image_id], h, w, cfg, np.random.default_rng([0, 0, i]))
        f = crop_reduction(w, h, crop, cfg) if r.file_name.endswith(".jpg") else 1
        assert f == 1 or f == 8 or min(w, h, crop[2], crop[3]) < 2 * f * cfg.image_size  # the largest that shrinks
        want[r.file_name] = (-(-h // f), -(-w // f))
    assert dict(calls) == want
    assert want["half.jpg"] == (96, 128) and want["quarter.jpg"] == (48, 64)  # the image-level rule: 1/4 (96, 128)
    for i, r in enumerate(ds.records):
        full = make_views(load_rgb(r.path), boxes[r.image_id], cfg, np.random.default_rng([0, 0, i]))
        got = samples[r.file_name]
        # the same relative regions, to a pixel or two of the 32 px views (crops and jitter round differently)
        for key in ("boxes1", "boxes2", "boxes3"):
            assert np.abs(got[key] - full[key]).max() < 0.06 * cfg.image_size, key
        assert np.abs(got["x1"].astype(int) - full["x1"]).mean() < 4  # same picture, resampled differently
    # the size check still reads the stored size, whatever the decode
    write_proposal_file(prop, [ProposalEntry(r.image_id, r.file_name, 1024, 768, 0, boxes[r.image_id] * 2)
                               for r in records], mode="fast", resize_long=500)
    with pytest.raises(ValueError, match=r"half.jpg is 256x192 but proposal file .* was made for a 1024x768 image"):
        build_pretrain_dataset(cfg, root, prop, seed=0)[0]


def test_dataset_takes_records_read_elsewhere(tmp_path):
    root, records, entries = make_source(tmp_path)
    prop = tmp_path / "p.safetensors"
    write_proposal_file(prop, entries, mode="fast", resize_long=500)
    ann = tmp_path / "missing.json"  # never opened: the records come from another process
    ds = build_pretrain_dataset(CFG, ann, prop, seed=1, records=source_records(CFG, root))
    ref = build_pretrain_dataset(CFG, root, prop, seed=1)
    assert ds.records == ref.records and np.array_equal(ds[(0, 2)]["x2"], ref[(0, 2)]["x2"])


def test_dataset_errors_and_counted_skips(tmp_path):
    root, records, entries = make_source(tmp_path)
    prop = tmp_path / "p.safetensors"
    write_proposal_file(prop, entries[:1], mode="fast", resize_long=500)
    with pytest.raises(ValueError, match="lacks 2 image"):
        build_pretrain_dataset(CFG, root, prop, seed=0)
    write_proposal_file(prop, entries[:2], mode="fast", resize_long=500,
                        skipped=[{"image_id": 2, "file_name": records[2].file_name, "reason": "unreadable"}])
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        ds = build_pretrain_dataset(CFG, root, prop, seed=0)
    assert len(ds) == 2 and ds.skipped[0]["reason"] == "unreadable"
    tiny = [ProposalEntry(e.image_id, e.file_name, 64, 20 if e.image_id == 0 else 48, 0, e.boxes) for e in entries]
    write_proposal_file(prop, tiny, mode="fast", resize_long=500)
    with pytest.warns(UserWarning, match="'too_small': 1"):
        ds = build_pretrain_dataset(CFG, root, prop, seed=0)  # below cfg.min_image_side = 32
    assert [r.image_id for r in ds.records] == [1, 2]
    renamed = [ProposalEntry(e.image_id, "other_" + e.file_name, 64, 48, 0, e.boxes) for e in entries]
    write_proposal_file(prop, renamed, mode="fast", resize_long=500)
    with pytest.raises(ValueError, match="belongs to another dataset"):
        build_pretrain_dataset(CFG, root, prop, seed=0)
    resized = [ProposalEntry(e.image_id, e.file_name, 640, 480, 0, e.boxes) for e in entries]
    write_proposal_file(prop, resized, mode="fast", resize_long=500)
    with pytest.raises(ValueError, match="was made for a 640x480 image"):
        build_pretrain_dataset(CFG, root, prop, seed=0)[0]
    with pytest.raises(ValueError, match="d3ssl-zoo proposals --images"):
        build_pretrain_dataset(CFG, root, None, seed=0)
    with pytest.raises(ValueError, match="neither"):
        build_pretrain_dataset(CFG, tmp_path / "x.txt", prop, seed=0)


def test_coco_source_finds_images_folder(tmp_path):
    root, records, entries = make_source(tmp_path)
    ann = tmp_path / "ann" / "instances_train2017.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": [{"id": 5 + r.image_id, "file_name": r.file_name, "width": 64, "height": 48}
                                          for r in records], "annotations": [], "categories": []}))
    with pytest.raises(FileNotFoundError, match="images_dir"):
        coco_records(ann)
    (tmp_path / "train2017").symlink_to(root)
    recs = coco_records(ann)
    assert [r.image_id for r in recs] == [5, 6, 7] and recs[0].path.startswith(str(tmp_path / "train2017"))


def test_sample_dataset_is_built_once_and_usable(tmp_path):
    ds = get_sample_dataset()  # the test run's cache (tests/conftest.py sets D3SSL_ZOO_CACHE)
    assert get_sample_dataset() == ds  # idempotent
    pre = json.loads(ds.pretrain_ann.read_text())
    names = [im["file_name"] for im in pre["images"]]
    train_names = {im["file_name"] for im in json.loads(ds.train_ann.read_text())["images"]}
    val_names = {im["file_name"] for im in json.loads(ds.val_ann.read_text())["images"]}
    # pre-training: the 16 photos and the labelled train images, unlabelled; never a val image
    assert len(names) == 16 + len(train_names) and train_names <= set(names) and not val_names & set(names)
    assert not pre["annotations"] and not pre["categories"]
    assert all((ds.images_dir / n).is_file() for n in names)
    assert sorted(ProposalStore(ds.proposals).image_ids.tolist()) == [im["id"] for im in pre["images"]]
    for ann_path, img_dir in ((ds.train_ann, ds.train_images), (ds.val_ann, ds.val_images)):
        ann = json.loads(ann_path.read_text())
        assert len(ann["categories"]) == 10
        sizes = {im["id"]: (im["width"], im["height"]) for im in ann["images"]}
        for im in ann["images"]:
            assert (img_dir / im["file_name"]).is_file()
        for a in ann["annotations"]:
            x, y, w, h = a["bbox"]
            W, H = sizes[a["image_id"]]
            assert w > 4 and h > 4 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
        per_image = np.bincount([a["image_id"] for a in ann["annotations"]])[1:]
        assert per_image.min() >= 2
    data = build_pretrain_dataset(CFG, "sample", None, seed=0)
    assert len(data) == len(names) and data[15]["x1"].shape == (64, 64, 3)  # includes the RGBA and grayscale photos
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "junk").write_text("x")
    with pytest.raises(RuntimeError, match="delete it"):
        get_sample_dataset(tmp_path / "half")


def test_sample_cache_is_versioned(tmp_path, monkeypatch):
    monkeypatch.setenv("D3SSL_ZOO_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / f"sample-v{SAMPLE_VERSION}"  # an older layout is never picked up
    old = tmp_path / "old"
    old.mkdir()
    (old / "complete.json").write_text(json.dumps({"version": SAMPLE_VERSION - 1, "seed": 0}))
    with pytest.raises(RuntimeError, match=f"no complete sample dataset of version {SAMPLE_VERSION}"):
        get_sample_dataset(old)


def test_cache_env_pointing_at_a_file_is_a_clear_error(tmp_path, monkeypatch):
    from d3ssl_zoo.data.scenes import SceneConfig
    from d3ssl_zoo.data.scenes import default_cache_dir as scenes_cache_dir

    (tmp_path / "f").write_text("")
    for env in (tmp_path / "f", tmp_path / "f" / "below"):
        monkeypatch.setenv("D3SSL_ZOO_CACHE", str(env))
        with pytest.raises(ValueError, match=rf"D3SSL_ZOO_CACHE={env} cannot be a cache folder: .*f is a file"):
            get_sample_dataset()
        with pytest.raises(ValueError, match="point D3SSL_ZOO_CACHE at a folder"):
            scenes_cache_dir(SceneConfig())
    monkeypatch.setenv("D3SSL_ZOO_CACHE", str(tmp_path / "new"))  # a missing folder is fine: created on use
    assert default_cache_dir() == tmp_path / "new" / f"sample-v{SAMPLE_VERSION}"


def _write_json(path, payload):
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_coco_json_errors_name_the_file_and_the_fix(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 1, "file_name": "c.png"}]
    dup = _write_json(tmp_path / "dup.json", {"images": images, "annotations": []})
    with pytest.raises(ValueError, match=r"dup\.json lists image id\(s\) 1 more than once.*must be unique"):
        coco_records(dup, imgs)
    bad = _write_json(tmp_path / "bad.json", '{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON \(line 2"):
        coco_records(bad, imgs)
    # without "images" the json is the problem, not the images folder that is searched for next
    noimg = _write_json(tmp_path / "instances_train2017.json", {"annotations": [], "categories": []})
    with pytest.raises(ValueError, match=r"instances_train2017\.json has no 'images' list"):
        coco_records(noimg)
    empty = _write_json(tmp_path / "empty.json", {"images": []})
    with pytest.raises(ValueError, match=r"empty\.json lists no images"):
        coco_records(empty, imgs)
    noid = _write_json(tmp_path / "noid.json", {"images": [{"file_name": "a.png"}]})
    with pytest.raises(ValueError, match=r"images\[0\] has no 'id'"):
        coco_records(noid, imgs)


def test_load_coco_drops_and_counts_invalid_annotations(tmp_path):
    from d3ssl_zoo.data.coco_json import load_coco

    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": "1,2,3,4"},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, float("nan"), 3, 4]},
            {"id": 4, "image_id": 1, "bbox": [1, 2, 3, 4]}]
    path = _write_json(tmp_path / "a.json", json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                                        "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    coco, dropped = load_coco(path)
    assert dropped == 3 and [a["id"] for a in coco.imgToAnns[1]] == [1]
    cats = _write_json(tmp_path / "cats.json", {"images": [{"id": 1, "file_name": "a.png"}],
                                                "categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]})
    with pytest.raises(ValueError, match=r"cats\.json lists category id\(s\) \[1\] more than once"):
        load_coco(cats)
    _write_json(cats, {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"name": "x"}]})
    with pytest.raises(ValueError, match=r"categories\[0\] has no integer 'id'"):
        load_coco(cats)


def test_collator_validates_view_boxes_on_the_cpu(tmp_path):
    # the training step builds RoIs without checks (no host sync): the collator is where bad boxes stop
    root, records, entries = make_source(tmp_path)
    prop = tmp_path / "p.safetensors"
    write_proposal_file(prop, entries, mode="fast", resize_long=500)
    ds = build_pretrain_dataset(CFG, root, prop, seed=1)
    samples = [ds[0], ds[1]]
    collate = PretrainCollator(CFG)
    assert collate(samples)["boxes2"].dtype == torch.float32
    samples[1]["boxes2"] = samples[1]["boxes2"].copy()
    samples[1]["boxes2"][1, 0] = np.nan
    with pytest.raises(ValueError, match=rf"boxes2 of image id {samples[1]['image_id']} has a non-finite"):
        collate(samples)
