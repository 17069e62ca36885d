"""O-KNN (paper Sec. 5.3): COCO reader, bank selection, weighted kNN, disturbed variant, cache."""
import json
import os

import cv2
import numpy as np
import pytest
import timm
import torch

from d3ssl_zoo.evaluation.features import c4_head_region_features, c5_region_features, stage_maps
from d3ssl_zoo.evaluation.objects import load_coco_objects, resized_size, scale_boxes
from d3ssl_zoo.evaluation.oknn import (
    disturb,
    extract_object_features,
    iter_shards,
    knn_topk,
    replacement_indices,
    run_oknn,
    select_bank_objects,
    topk_accuracy,
    weighted_vote,
)


@pytest.fixture(scope="module")
def splits(tmp_path_factory, write_coco):
    root = tmp_path_factory.mktemp("coco")
    return write_coco(root, "train", 8, seed=0) + write_coco(root, "val", 4, seed=1)


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=0).eval()


def brute_force_vote(q, bank, bank_labels, k, temperature, num_classes):
    sims = q @ bank.T
    scores = torch.zeros(q.shape[0], num_classes, dtype=torch.float64)
    for i in range(q.shape[0]):
        order = sorted(range(bank.shape[0]), key=lambda j: -float(sims[i, j]))[:k]
        for j in order:
            scores[i, bank_labels[j]] += np.exp(float(sims[i, j]) / temperature)
    return scores


def test_weighted_knn_matches_brute_force_across_chunks():
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(203, 16, generator=g), dim=1)
    labels = torch.randint(0, 7, (203,), generator=g)
    q = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=1)
    chunks = [(bank[s:s + 50], labels[s:s + 50]) for s in range(0, 203, 50)]
    sims, nl = knn_topk(q, chunks, k=20, query_block=8)
    scores = weighted_vote(sims, nl, 7, 0.07)
    ref = brute_force_vote(q.double(), bank.double(), labels, 20, 0.07, 7)
    torch.testing.assert_close(scores.double(), ref, rtol=1e-4, atol=1e-6)
    assert torch.all(sims[:, :-1] >= sims[:, 1:])


def test_topk_accuracy_known_answer():
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.5, 0.1, 0.2, 0.3, 0.4, 0.6]])
    acc = topk_accuracy(scores, torch.tensor([1, 1]), (1, 5))
    assert acc == {1: 50.0, 5: 50.0}
    assert topk_accuracy(scores, torch.tensor([1, 2]), (1, 5))[5] == 100.0


def test_knn_rejects_bank_smaller_than_k():
    q = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    with pytest.raises(ValueError, match="fewer than k=20"):
        knn_topk(q, [(q, torch.zeros(3, dtype=torch.long))], k=20)


def test_bank_selection_balances_classes_and_is_seeded():
    labels = [np.array([0, 0, 0, 1]), np.array([0, 1, 2]), np.array([0, 0]), np.array([2, 1, 0])] * 5
    sel = select_bank_objects(labels, 1, np.random.default_rng(3))
    picked = np.concatenate([lab[s] for lab, s in zip(labels, sel)])
    assert all(len(s) == 1 for s in sel)
    counts = np.bincount(picked, minlength=3)
    assert counts.max() - counts.min() <= 2, counts
    again = select_bank_objects(labels, 1, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(sel, again))
    assert [len(s) for s in select_bank_objects(labels, 0, np.random.default_rng(0))] == [len(x) for x in labels]
    assert [len(s) for s in select_bank_objects(labels, 3, np.random.default_rng(0))][:4] == [3, 3, 2, 3]
    with pytest.raises(ValueError, match="objects_per_image"):
        select_bank_objects(labels, -1, np.random.default_rng(0))


def test_replacement_is_another_image():
    r = replacement_indices(5, np.random.default_rng(0))
    assert np.all(r != np.arange(5)) and r.min() >= 0 and r.max() < 5
    with pytest.raises(ValueError, match="at least 2 images"):
        replacement_indices(1, np.random.default_rng(0))


def test_disturb_keeps_boxes_and_replaces_background():
    img = np.full((10, 12, 3), 7, np.uint8)
    other = np.zeros_like(img)
    out = disturb(img, np.array([[2.5, 1.0, 5.0, 4.2]]), other)
    assert (out[1:5, 2:5] == 7).all()
    assert out.sum() == 7 * 3 * 4 * 3
    assert np.array_equal(disturb(img, np.zeros((0, 4)), img), img)


def test_coco_reader_counts_skips_and_clips(tmp_path, write_coco):
    ann, img_dir = write_coco(tmp_path, "s", 3)
    d = json.load(open(ann))
    d["annotations"] += [
        {"id": 100, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 10, 10]},
        {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [500, 500, 10, 10]},
        {"id": 102, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [80, 40, 40, 40]},
        {"id": 103, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [3, 3, 0.5, 9]},
    ]
    d["images"].append({"id": 99, "file_name": "gone.png", "width": 50, "height": 50})
    json.dump(d, open(ann, "w"))
    objs = load_coco_objects(ann, img_dir)
    assert objs.skips["crowd_boxes"] == 1
    assert objs.skips["boxes_outside_image"] == 1
    assert objs.skips["boxes_too_small"] == 1
    assert objs.skips["missing_image_files"] == 1
    assert objs.clipped_boxes == 1
    first = objs.images[0]
    assert first.objects.boxes[:, 2].max() <= first.width and first.objects.boxes[:, 3].max() <= first.height


def test_coco_reader_bad_inputs(tmp_path, write_coco):
    ann, img_dir = write_coco(tmp_path, "s", 2)
    d = json.load(open(ann))
    json.dump({"images": d["images"], "annotations": [], "categories": d["categories"]}, open(ann, "w"))
    with pytest.raises(ValueError, match="no annotations with 'bbox'"):
        load_coco_objects(ann, img_dir)
    json.dump({"images": d["images"], "annotations": d["annotations"]}, open(ann, "w"))
    with pytest.raises(ValueError, match="no 'categories'"):
        load_coco_objects(ann, img_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_coco_objects(tmp_path / "nope.json", img_dir)
    json.dump(d, open(ann, "w"))
    with pytest.raises(ValueError, match="no usable image"):
        load_coco_objects(ann, tmp_path)


def test_coco_reader_skips_and_counts_nan_and_string_boxes(tmp_path, write_coco):
    ann, img_dir = write_coco(tmp_path, "s", 3)
    d = json.load(open(ann))
    kept = len(d["annotations"])
    d["annotations"] += [
        {"id": 100, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1.0, float("nan"), 10.0, 10.0]},
        {"id": 101, "image_id": 2, "category_id": 1, "iscrowd": 0, "bbox": "10,10,20,20"},
    ]
    json.dump(d, open(ann, "w"))  # NaN is written as the token NaN, which json readers accept
    objs = load_coco_objects(ann, img_dir)
    assert objs.skips["invalid_annotations"] == 2 and objs.num_objects == kept


def test_coco_reader_rejects_duplicate_image_ids_and_blames_the_json(tmp_path, write_coco):
    ann, img_dir = write_coco(tmp_path, "s", 3)
    d = json.load(open(ann))
    d["images"][2]["id"] = d["images"][0]["id"]
    json.dump(d, open(ann, "w"))
    with pytest.raises(ValueError, match=r"s\.json lists image id\(s\) 1 more than once"):
        load_coco_objects(ann, img_dir)
    json.dump({"annotations": d["annotations"], "categories": d["categories"]}, open(ann, "w"))
    with pytest.raises(ValueError, match=r"s\.json has no 'images' list"):
        load_coco_objects(ann, tmp_path / "no_such_folder")
    with open(ann, "w") as f:
        f.write('{"images": [}')
    with pytest.raises(ValueError, match=r"s\.json is not valid JSON \(line 1"):
        load_coco_objects(ann, img_dir)


def test_resize_short_side_and_box_scaling():
    assert resized_size(480, 640, 512) == (512, 683)
    assert resized_size(640, 480, 512) == (683, 512)
    b = scale_boxes(np.array([[0, 0, 640, 480]], np.float32), (480, 640), (512, 683))
    np.testing.assert_allclose(b, [[0, 0, 683, 512]], rtol=1e-6)


def test_stage_maps_timm_and_hook_paths_agree(r18):
    x = torch.randn(1, 3, 64, 96)
    via_timm = stage_maps(r18, x)
    hooked = stage_maps(torch.nn.Sequential(r18.conv1, r18.bn1, r18.act1, r18.maxpool), x, ("3",))
    assert [m.shape[1] for m in via_timm.values()] == [64, 128, 256, 512]
    assert via_timm["layer4"].shape[-2:] == (2, 3)
    assert hooked["3"].shape == (1, 64, 16, 24)
    with pytest.raises(ValueError, match="no submodule 'layer1'"):
        stage_maps(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), x)


def test_c5_region_features_equal_zoo_forward_regions_c5():
    import d3ssl_zoo

    model = d3ssl_zoo.create_model("d3ssl_r18c4").eval()
    x = torch.randn(2, 3, 96, 128)
    boxes = [torch.tensor([[4.0, 8.0, 60.0, 70.0]]), torch.tensor([[0.0, 0.0, 128.0, 96.0], [30, 20, 90, 50.0]])]
    rois = d3ssl_zoo.boxes_to_rois(boxes, 2)
    with torch.no_grad():
        ours = c5_region_features(model, x, rois)
        ref = torch.nn.functional.normalize(model.forward_regions_c5(x, boxes), dim=1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_c4_head_features_are_the_pretraining_path_and_keyed_apart(splits, tmp_path):
    import d3ssl_zoo

    model = d3ssl_zoo.create_model("d3ssl_r18c4").eval()
    x = torch.randn(2, 3, 96, 128)
    boxes = [torch.tensor([[4.0, 8.0, 60.0, 70.0]]), torch.tensor([[0.0, 0.0, 128.0, 96.0], [30, 20, 90, 50.0]])]
    rois = d3ssl_zoo.boxes_to_rois(boxes, 2)
    with torch.no_grad():  # roi size 14 is the zoo's forward_regions (RoIAlign 14x14 on C4 -> res5 -> pool)
        ours = c4_head_region_features(model, x, rois, 14)
        ref = torch.nn.functional.normalize(model.forward_regions(x, boxes), dim=1)
        c5 = c5_region_features(model, x, rois)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, c5, atol=1e-3)
    with pytest.raises(TypeError, match="no C4 region head"):
        c4_head_region_features(timm.create_model("resnet18", num_classes=0), x, rois)

    train_ann, train_dir = splits[:2]
    objs = load_coco_objects(train_ann, train_dir)
    sel = select_bank_objects([r.objects.labels for r in objs.images], 1, np.random.default_rng(0))
    kw = dict(short_side=64, batch_size=4, progress=False)
    c5_dir = extract_object_features(model, objs, sel, str(tmp_path), **kw)
    head_dir = extract_object_features(model, objs, sel, str(tmp_path), features="c4_head:7", **kw)
    assert c5_dir != head_dir  # a cache never serves one read for the other
    f5 = torch.cat([f for f, _ in iter_shards(c5_dir)])
    fh = torch.cat([f for f, _ in iter_shards(head_dir)])
    assert f5.shape == fh.shape == (len(objs.images), 512) and not torch.equal(f5, fh)
    with pytest.raises(ValueError, match=r"unknown O-KNN features 'c4'.*c4_head:14"):
        run_oknn(model, *splits, features="c4")


def test_disturbed_equals_plain_when_replacement_is_the_image(splits, r18, tmp_path):
    train_ann, train_dir = splits[:2]
    objs = load_coco_objects(train_ann, train_dir)
    sel = select_bank_objects([r.objects.labels for r in objs.images], 1, np.random.default_rng(0))
    kw = dict(short_side=64, batch_size=4, progress=False)
    plain = extract_object_features(r18, objs, sel, str(tmp_path), **kw)
    same = extract_object_features(r18, objs, sel, str(tmp_path),
                                   replacements=np.arange(len(objs.images)), **kw)
    other = extract_object_features(r18, objs, sel, str(tmp_path),
                                    replacements=replacement_indices(len(objs.images), np.random.default_rng(0)), **kw)
    f_plain, l_plain = (torch.cat(t) for t in zip(*iter_shards(plain)))
    f_same, l_same = (torch.cat(t) for t in zip(*iter_shards(same)))
    f_other, _ = (torch.cat(t) for t in zip(*iter_shards(other)))
    assert f_plain.shape == (len(objs.images), 512)
    assert torch.equal(f_plain, f_same) and torch.equal(l_plain, l_same)
    assert not torch.equal(f_plain, f_other)


def test_run_oknn_end_to_end_and_cache_resume(splits, r18, tmp_path):
    cache = tmp_path / "cache"
    kw = dict(objects_per_image=0, short_side=64, k=5, batch_size=3, cache_dir=str(cache), progress=False)
    r = run_oknn(r18, *splits, **kw)
    assert r["num_queries"] == sum(len(x) for x in [json.load(open(splits[2]))["annotations"]])
    assert r["num_bank"] == len(json.load(open(splits[0]))["annotations"])
    assert 0 <= r["top1"] <= r["top5"] <= 100
    per_class = r["bank_per_class"]
    assert sum(per_class.values()) == r["num_bank"]
    assert r["classes_with_fewer_than_k_bank_objects"] == [c for c, n in per_class.items() if n < 5]
    # a killed run: drop one shard of the bank; the rerun recomputes it and gives the same answer
    folders = sorted(p for p in cache.iterdir() if p.is_dir())
    shards = sorted(folders[0].glob("shard_*.npz"))
    os.remove(shards[-1])
    again = run_oknn(r18, *splits, **kw)
    assert (again["top1"], again["top5"]) == (r["top1"], r["top5"])
    d = run_oknn(r18, *splits, **{**kw, "disturbed": True, "cache_dir": None})
    assert d["metric"] == "disturbed_oknn" and 0 <= d["top1"] <= 100


def test_run_oknn_bad_inputs(splits, r18, tmp_path, write_coco):
    with pytest.raises(ValueError, match="fewer than k=50"):
        run_oknn(r18, *splits, k=50, short_side=64, progress=False)
    with pytest.raises(ValueError, match="temperature > 0"):
        run_oknn(r18, *splits, temperature=0, progress=False)
    for bad in (dict(short_side=0), dict(short_side=-1), dict(batch_size=0)):
        with pytest.raises(ValueError, match="need short_side >= 1 and batch_size >= 1"):
            run_oknn(r18, *splits, progress=False, **bad)
    ann, img_dir = write_coco(tmp_path, "other", 2)
    d = json.load(open(ann))
    d["categories"].append({"id": 77, "name": "extra"})
    json.dump(d, open(ann, "w"))
    with pytest.raises(ValueError, match="different category lists"):
        run_oknn(r18, splits[0], splits[1], ann, img_dir, progress=False)


def test_one_decoder_and_one_orientation_rule_for_evaluation_and_detection(tmp_path):
    # A photo whose EXIF says "rotate 90": COCO boxes refer to its stored pixels (pycocotools,
    # torchvision's COCO reader); cv2.imread would rotate it and misplace every box.
    from PIL import Image

    from d3ssl_zoo.data import ImageObjects, ImageRecord, load_rgb
    from d3ssl_zoo.detection.data import DetectionDataset
    from d3ssl_zoo.evaluation.objects import read_image

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    assert cv2.imread(str(path)).shape[:2] == (40, 20)  # what the old evaluation reader saw
    no_objects = ImageObjects(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), difficult=np.zeros(0, bool))
    rec = ImageRecord(1, str(path), width=40, height=20, objects=no_objects)
    img = read_image(rec, (20, 40))
    assert img.shape == (20, 40, 3) and img[:, :15].mean() > 200 and img[:, 25:].mean() < 50
    assert np.array_equal(img, load_rgb(path))
    image, _ = DetectionDataset([rec], train=False)[0]  # the same record: one record type
    assert tuple(image.shape) == (3, 20, 40)
    assert torch.equal((image * 255).round().byte().permute(1, 2, 0), torch.from_numpy(load_rgb(path)))
