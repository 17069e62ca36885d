"""Detection transfer without detectron2: VOC / COCO evaluators with known answers, readers, the
R50-C4-form detector and a short fine-tuning run (resume included) on tiny made-up data."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

import d3ssl_zoo
from d3ssl_zoo.checkpoint import list_checkpoints, verify_checkpoint
from d3ssl_zoo.data import ImageObjects, ImageRecord
from d3ssl_zoo.data.coco_json import no_skips
from d3ssl_zoo.detection import (
    C4DetectorConfig,
    DetectionDataset,
    build_c4_detector,
    coco_results,
    collate_detection,
    describe_det_recipe,
    evaluate_coco,
    evaluate_voc,
    load_det_recipe,
    lr_factor,
    read_coco,
    read_voc,
    voc_ap,
)
from d3ssl_zoo.detection.data import hflip_sample
from d3ssl_zoo.detection.finetune import finetune
from d3ssl_zoo.tags import recipe_file

ROOT = Path(__file__).resolve().parents[1]


def _counted(skips):
    return {k: n for k, n in skips.items() if n}


def _rec(image_id, boxes, labels, difficult=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    difficult = np.asarray(difficult if difficult is not None else [False] * len(labels), bool)
    return ImageRecord(image_id, f"{image_id}.jpg", file_name=f"{image_id}.jpg", width=64, height=64,
                       objects=ImageObjects(boxes, np.asarray(labels, np.int64), difficult=difficult))


# --- VOC evaluator ------------------------------------------------------------------------------------------------

def test_voc_ap_11_point_and_area_by_hand():
    rec = np.array([0.5, 0.5, 0.5, 0.5, 1.0])
    prec = np.array([1.0, 1.0, 0.5, 1 / 3, 0.5])
    # 11-point: recall thresholds 0..0.5 see precision 1, 0.6..1.0 see 0.5 -> (6 + 2.5) / 11
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(8.5 / 11)
    # area under the envelope: 0.5 * 1 + 0.5 * 0.5
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.75)
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0


def test_voc_evaluator_matches_hand_computed_values():
    # class 0: img1 has a normal and a difficult object, img2 one object (npos = 2)
    # class 1: img2 one 10x10 object, detected by a 10x12 box: devkit IoU 100/120 = 0.833
    records = [_rec("img1", [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], [False, True]),
               _rec("img2", [[0, 0, 20, 20], [0, 0, 10, 10]], [0, 1])]
    preds = {
        "img1": {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], "scores": [0.9, 0.8, 0.6],
                 "labels": [0, 0, 0]},        # TP, difficult (ignored), duplicate (FP)
        "img2": {"boxes": [[10, 10, 30, 30], [0, 0, 20, 20], [0, 0, 10, 12]], "scores": [0.7, 0.5, 0.95],
                 "labels": [0, 0, 1]},        # IoU 1/7 (FP), TP; class 1 hit at IoU 0.833
    }
    out = evaluate_voc(preds, records, class_names=("a", "b"), use_07_metric=True)
    ap_a = 100 * 8.5 / 11                     # the curve of the test above, at every IoU threshold
    ap_b = [100.0] * 7 + [0.0] * 3            # IoU 0.833 > 0.50..0.80, not > 0.85..0.95
    assert out["AP50_per_class"] == pytest.approx({"a": ap_a, "b": 100.0})
    assert out["AP50"] == pytest.approx((ap_a + 100) / 2)
    assert out["AP75"] == pytest.approx((ap_a + 100) / 2)
    assert out["AP"] == pytest.approx((ap_a + np.mean(ap_b)) / 2)
    area = evaluate_voc(preds, records, class_names=("a", "b"), use_07_metric=False)
    assert area["AP50_per_class"]["a"] == pytest.approx(75.0)


def test_voc_evaluator_edges():
    records = [_rec("img1", [[0, 0, 10, 10]], [0])]
    out = evaluate_voc({}, records, class_names=("a", "b"))
    assert out["AP"] == 0.0 and out["classes_without_objects"] == ["b"]
    with pytest.raises(ValueError, match="not in the test set"):
        evaluate_voc({"other": {"boxes": [], "scores": [], "labels": []}}, records, class_names=("a",))
    with pytest.raises(ValueError, match="0-based class indices"):
        evaluate_voc({"img1": {"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [3]}}, records, class_names=("a",))


# --- readers ------------------------------------------------------------------------------------------------------

def _voc_xml(objects, w=64, h=48):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


def make_voc(root, year, split, images, seed=0):
    """A VOCdevkit/VOC<year> split of made-up images: one coloured rectangle per object on noise."""
    base = root / f"VOC{year}"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = {"cat": (230, 40, 40), "dog": (40, 40, 230)}
    for image_id, objects in images.items():
        arr = rng.integers(90, 140, (48, 64, 3)).astype(np.uint8)
        for name, (x1, y1, x2, y2), _ in objects:
            arr[y1 - 1:y2, x1 - 1:x2] = colours[name]
        Image.fromarray(arr).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (base / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(objects))
    with open(base / "ImageSets" / "Main" / f"{split}.txt", "a") as f:
        f.write("".join(f"{i}\n" for i in images))


def test_voc_reader_reads_detectron2_coordinates_and_difficult(tmp_path):
    make_voc(tmp_path, "2007", "test", {"000001": [("dog", (11, 5, 40, 30), False), ("cat", (1, 1, 8, 9), True)]})
    (r,) = read_voc(tmp_path, "2007", "test")
    assert (r.width, r.height) == (64, 48)
    np.testing.assert_array_equal(r.objects.boxes, [[10, 4, 40, 30], [0, 0, 8, 9]])
    assert r.objects.labels.tolist() == [11, 7] and r.objects.difficult.tolist() == [False, True]
    (tmp_path / "VOC2007" / "Annotations" / "000001.xml").write_text(_voc_xml([("unicorn", (1, 1, 5, 5), False)]))
    with pytest.raises(ValueError, match="unicorn"):
        read_voc(tmp_path, "2007", "test")
    with pytest.raises(FileNotFoundError, match="VOCdevkit"):
        read_voc(tmp_path, "2012", "trainval")


def test_voc_reader_counts_objects_without_finite_corners_and_names_bad_xml(tmp_path):
    make_voc(tmp_path, "2007", "test", {"000001": [("dog", (11, 5, 40, 30), False)]})
    xml = tmp_path / "VOC2007" / "Annotations" / "000001.xml"
    xml.write_text(_voc_xml([("dog", (11, 5, 40, 30), False), ("cat", ("nan", 1, 8, 9), False),
                             ("cat", ("x", 1, 8, 9), False), ("cat", (9, 1, 8, 9), False), ("cat", (1, 9, 8, 2), False),
                             ("cat", (3, 3, 3, 3), False)]))
    skips = no_skips()
    (r,) = read_voc(tmp_path, "2007", "test", skips=skips)
    # inverted corners are left out and counted; xmax = xmin is VOC's 1-pixel box, kept
    np.testing.assert_array_equal(r.objects.boxes, [[10, 4, 40, 30], [2, 2, 3, 3]])
    assert _counted(skips) == {"invalid_annotations": 4}
    xml.write_text("<annotation><size>")
    with pytest.raises(ValueError, match=r"000001\.xml is not valid XML"):
        read_voc(tmp_path, "2007", "test")


def _square_poly(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def make_coco(path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
              {"id": 3, "file_name": "c.jpg", "width": 64, "height": 48}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 8, 20, 16], "area": 320, "iscrowd": 0,
         "segmentation": _square_poly(10, 8, 30, 24)},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [30, 10, 24, 30], "area": 720, "iscrowd": 0,
         "segmentation": _square_poly(30, 10, 54, 40)},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1,
         "segmentation": _square_poly(0, 0, 10, 10)},
    ]
    cats = [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_coco_reader_and_perfect_detections_score_100(tmp_path, capsys):
    make_coco(tmp_path / "ann.json")
    from d3ssl_zoo.detection.data import _masks
    objects = read_coco(tmp_path / "ann.json", tmp_path, train=True)
    train, cats = objects.images, objects.category_ids
    assert cats == [3, 7] and [r.image_id for r in train] == [1, 2]
    assert _counted(objects.skips) == {"crowd_boxes": 1, "images_without_objects": 1}
    assert objects.summary() == "2 images, 2 objects; skipped: 1 images without objects, 1 crowd boxes"
    test_split = read_coco(tmp_path / "ann.json", tmp_path, train=False)
    test, gt = test_split.images, test_split.coco
    assert [r.image_id for r in test] == [1, 2, 3] and _counted(test_split.skips) == {}  # every test image and box
    np.testing.assert_array_equal(test[0].objects.boxes, [[10, 8, 30, 24]])
    masks = _masks(train[0])
    assert masks.shape == (1, 48, 64) and masks[0, 10:20, 12:28].all() and not masks[0, 30:].any()

    preds = {r.image_id: {"boxes": r.objects.boxes, "scores": np.ones(len(r.objects.labels)),
                          "labels": r.objects.labels, "masks": _masks(r).float().unsqueeze(1).numpy()} for r in train}
    results = coco_results(preds, cats)
    assert results[0]["category_id"] == 3 and results[0]["bbox"] == [10.0, 8.0, 20.0, 16.0]
    out = evaluate_coco(gt, results, ("bbox",))
    assert out["bbox"]["AP"] == pytest.approx(100.0) and out["bbox"]["AP50"] == pytest.approx(100.0)
    segm = evaluate_coco(gt, [{k: v for k, v in r.items() if k != "bbox"} for r in results], ("segm",))
    assert segm["segm"]["AP"] == pytest.approx(100.0)
    # boxes shifted to IoU ~0.6: counted at AP50, not at AP75
    shifted = [{**r, "bbox": [r["bbox"][0] + r["bbox"][2] / 4, r["bbox"][1], r["bbox"][2], r["bbox"][3]]}
               for r in results]
    worse = evaluate_coco(gt, [{k: v for k, v in r.items() if k != "segmentation"} for r in shifted])["bbox"]
    assert worse["AP50"] == pytest.approx(100.0) and worse["AP75"] == pytest.approx(0.0)
    assert evaluate_coco(gt, [])["bbox"]["AP"] == 0.0
    assert capsys.readouterr().out == ""      # pycocotools' table is returned, not printed


def test_coco_reader_counts_bad_annotations_instead_of_crashing_or_training_on_nan(tmp_path):
    make_coco(tmp_path / "ann.json")
    d = json.loads((tmp_path / "ann.json").read_text())
    d["annotations"] += [
        {"id": 10, "image_id": 1, "category_id": 999, "bbox": [1, 1, 8, 8], "area": 64, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [1, float("nan"), 8, 8], "area": 64, "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": "1,1,8,8", "area": 64, "iscrowd": 0},
    ]
    (tmp_path / "ann.json").write_text(json.dumps(d))
    for train in (True, False):
        objects = read_coco(tmp_path / "ann.json", tmp_path, train=train)
        records, gt = objects.images, objects.coco
        assert objects.skips["boxes_unknown_category"] == 1
        assert objects.skips["invalid_annotations"] == 2
        assert all(np.isfinite(r.objects.boxes).all() for r in records)
        np.testing.assert_array_equal(records[0].objects.boxes, [[10, 8, 30, 24]])
        assert sorted(gt.anns) == [1, 2, 3, 10]  # the unreadable boxes are not ground truth either
    d["images"].append(dict(d["images"][0]))
    (tmp_path / "ann.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"ann\.json lists image id\(s\) 1 more than once"):
        read_coco(tmp_path / "ann.json", tmp_path, train=True)


def test_detection_reads_objects_as_evaluation_does_one_box_rule(tmp_path):
    make_coco(tmp_path / "ann.json")
    d = json.loads((tmp_path / "ann.json").read_text())
    d["annotations"] += [  # on the 64x48 image 1: across the right border, outside it, thinner than 1 px once cut
        {"id": 20, "image_id": 1, "category_id": 7, "bbox": [50, 30, 30, 10], "area": 300, "iscrowd": 0},
        {"id": 21, "image_id": 1, "category_id": 7, "bbox": [70, 10, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 22, "image_id": 1, "category_id": 7, "bbox": [63.5, 10, 5, 5], "area": 25, "iscrowd": 0},
    ]
    (tmp_path / "ann.json").write_text(json.dumps(d))
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / name)
    from d3ssl_zoo.evaluation.objects import load_coco_objects
    det, ev = read_coco(tmp_path / "ann.json", tmp_path, train=True), load_coco_objects(tmp_path / "ann.json", tmp_path)
    np.testing.assert_array_equal(det.images[0].objects.boxes, [[10, 8, 30, 24], [50, 30, 64, 40]])
    assert det.skips == ev.skips and det.clipped_boxes == ev.clipped_boxes == 1
    assert _counted(det.skips) == {"images_without_objects": 1, "crowd_boxes": 1, "boxes_outside_image": 1,
                                   "boxes_too_small": 1}
    for a, b in zip(det.images, ev.images, strict=True):
        assert (a.image_id, a.path, a.width, a.height) == (b.image_id, b.path, b.width, b.height)
        np.testing.assert_array_equal(a.objects.boxes, b.objects.boxes)
        np.testing.assert_array_equal(a.objects.labels, b.objects.labels)
    assert det.coco is not None and ev.coco is None  # the ground truth only where it is scored


# --- detector -----------------------------------------------------------------------------------------------------

TINY = dict(min_size_train=(64,), min_size_test=64, max_size=96, anchor_sizes=(16, 32, 64),
            rpn_pre_nms_train=300, rpn_post_nms_train=64, rpn_pre_nms_test=300, rpn_post_nms_test=32,
            rpn_batch_per_image=64, roi_batch_per_image=32)


def _tiny_batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 48, 64, generator=g) * 0.3 for _ in range(2)]
    images[0][:, 8:30, 10:40] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
    images[1][:, 20:44, 30:60] = torch.tensor([0.1, 0.1, 0.9]).view(3, 1, 1)
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 20.0, 60.0, 44.0]]), "labels": torch.tensor([2])}]
    for t in targets:
        m = torch.zeros(1, 48, 64, dtype=torch.uint8)
        x1, y1, x2, y2 = t["boxes"][0].int().tolist()
        m[0, y1:y2, x1:x2] = 1
        t["masks"] = m
    return images, targets


def test_c4_detector_has_the_res5_head_layout():
    trunk = d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0)
    layer4 = trunk.layer4
    det = build_c4_detector(trunk, C4DetectorConfig(num_classes=2, mask_on=True, **TINY))
    assert det.backbone.out_channels == trunk.c4_channels == 256
    assert det.roi_heads.box_head.res5 is layer4                       # res5 of the pre-trained trunk
    assert isinstance(det.roi_heads.box_head.norm, torch.nn.BatchNorm2d)  # MoCo's extra norm
    feats = det.backbone(torch.randn(1, 3, 64, 96))["0"]
    assert feats.shape == (1, 256, 4, 6)                               # C4, stride 16
    rois = det.roi_heads.box_roi_pool({"0": feats}, [torch.tensor([[0.0, 0.0, 32.0, 32.0]])], None)
    assert rois.shape == (1, 256, 14, 14)                              # RoIAlign 14x14 on C4
    assert det.roi_heads.box_head(rois).shape == (1, 512, 7, 7)       # res5 with stride 2
    fine_tuned = {id(t) for t in [*det.parameters(), *det.buffers()]}
    assert all(id(t) in fine_tuned for t in [*trunk.parameters(), *trunk.buffers()])  # the whole trunk, shared
    det.eval()
    with torch.no_grad():
        out = det([torch.rand(3, 48, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"}
    assert out[0]["masks"].shape[1:] == (1, 48, 64)


def _boxes_at_coco_test_scale(n=300, seed=0):
    # reference boxes (anchors / proposals) anywhere in an 800 x 1333 image, and small deltas
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([1200.0, 700.0]) + torch.tensor([100.0, 50.0])
    wh = torch.rand(n, 2, generator=g) * 120 + 16
    return torch.cat([xy - wh, xy], dim=1), torch.randn(n, 4, generator=g) * 0.2


@pytest.mark.parametrize("part", ["rpn", "roi_heads"])
def test_box_decoding_is_float32_under_bf16_autocast(part):
    det = build_c4_detector(d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0), C4DetectorConfig(num_classes=2))
    coder = getattr(det, part).box_coder
    boxes, codes = _boxes_at_coco_test_scale()
    codes = codes.bfloat16()  # what the regression head emits under bf16 autocast
    exact = BoxCoder(coder.weights).decode(codes.float(), [boxes])  # float32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = coder.decode(codes, [boxes])
        stock = BoxCoder(coder.weights).decode(codes, [boxes])
    assert ours.dtype == torch.float32
    assert (ours - exact).abs().max() < 0.01
    assert stock.dtype == torch.bfloat16 and (stock.float() - exact).abs().max() > 1.0  # torchvision's rounding


def test_anchors_are_float32_under_bf16_autocast():
    det = build_c4_detector(d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0), C4DetectorConfig(num_classes=2))
    images = ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)])
    c4 = torch.zeros(1, 256, 50, 76)
    exact = AnchorGenerator(det.rpn.anchor_generator.sizes, det.rpn.anchor_generator.aspect_ratios)(images, [c4])[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = det.rpn.anchor_generator(images, [c4.bfloat16()])[0]
        stock = AnchorGenerator(det.rpn.anchor_generator.sizes,
                                det.rpn.anchor_generator.aspect_ratios)(images, [c4.bfloat16()])[0]
    assert ours.dtype == torch.float32 and torch.equal(ours, exact)
    assert (stock.float() - exact).abs().max() > 2.0  # bf16 puts 1024-2048 px on an 8 px grid


def test_detector_under_bf16_autocast_keeps_boxes_and_scores_float32():
    torch.manual_seed(0)
    # few RoIs: a CPU without native bf16 (AVX2) runs bf16 convolutions through aten's slow kernel,
    # ~25x fp32, and this is a test of dtypes, not of sampling (92 s with TINY's 32 RoIs per image)
    few_rois = dict(TINY, rpn_post_nms_train=8, rpn_post_nms_test=4, roi_batch_per_image=4)
    det = build_c4_detector(d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0),
                            C4DetectorConfig(num_classes=2, mask_on=True, **few_rois))
    images, targets = _tiny_batch()
    proposals = []
    det.rpn.register_forward_hook(lambda module, args, out: proposals.extend(out[0]))
    det.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = det(images, targets)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert proposals and all(p.dtype == torch.float32 for p in proposals)
    det.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = det(images)
    assert out[0]["boxes"].dtype == torch.float32 and out[0]["scores"].dtype == torch.float32


def test_hflip_moves_boxes_and_masks():
    img = torch.zeros(3, 4, 10)
    img[:, :, 1] = 1
    t = {"boxes": torch.tensor([[1.0, 0.0, 3.0, 4.0]]), "masks": (img[:1] > 0).to(torch.uint8)}
    fimg, ft = hflip_sample(img, t)
    assert fimg[0, 0, 8] == 1 and ft["boxes"].tolist() == [[7.0, 0.0, 9.0, 4.0]] and ft["masks"][0, 0, 8] == 1


@pytest.mark.slow
def test_a_few_finetuning_steps_lower_the_loss():
    torch.manual_seed(0)
    trunk = d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0)
    det = build_c4_detector(trunk, C4DetectorConfig(num_classes=2, mask_on=True, **TINY))
    images, targets = _tiny_batch()
    opt = torch.optim.SGD(det.parameters(), lr=0.01, momentum=0.9)

    def loss_at_fixed_sampling():
        torch.manual_seed(123)        # same RPN / RoI sampling before and after
        with torch.no_grad():
            return float(sum(det(images, targets).values()))

    det.train()
    before = loss_at_fixed_sampling()
    for _ in range(8):
        loss = sum(det(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_at_fixed_sampling()
    assert after < 0.8 * before, (before, after)


def test_lr_schedule_is_detectron2s_warmup_multistep():
    r = load_det_recipe(None, {"warmup_iters": 100, "warmup_factor": 0.001, "steps": [18000, 22000]})
    assert lr_factor(0, r) == pytest.approx(0.001)
    assert lr_factor(50, r) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(100, r) == 1.0 and lr_factor(18000, r) == pytest.approx(0.1)
    assert lr_factor(23999, r) == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"unknown recipe key 'lr'.*valid keys: num_classes"):
        load_det_recipe(None, {"lr": 0.1})


def test_detection_recipes_are_typed_like_pretraining_recipes(tmp_path):
    # one loader for both (d3ssl_zoo.recipe): PyYAML reads 2e-2 as a string; the field's type decides
    (tmp_path / "r.yaml").write_text("base_lr: 2e-2\nsteps: [10, 20]\nmixed_precision: 'no'\n")
    r = load_det_recipe(tmp_path / "r.yaml", ["max_iter=30", "mixed_precision=no", "voc_test=['2007', test]"])
    assert (r.base_lr, r.steps, r.max_iter, r.mixed_precision) == (0.02, (10, 20), 30, "no")
    assert isinstance(r.base_lr, float) and r.voc_test == ("2007", "test")
    with pytest.raises(TypeError, match="max_iter must be an integer"):
        load_det_recipe(None, ["max_iter=1.5"])
    with pytest.raises(ValueError, match="steps must increase"):
        load_det_recipe(None, ["steps=[20, 10]"])
    (tmp_path / "list.yaml").write_text("- max_iter: 3\n")
    with pytest.raises(ValueError, match=r"list\.yaml holds a YAML list, not a mapping of recipe keys \(num_classes:"):
        load_det_recipe(tmp_path / "list.yaml")


def test_shipped_recipes_are_the_papers_protocol():
    voc, coco = load_det_recipe(recipe_file("det_voc")), load_det_recipe(recipe_file("det_coco"))
    assert (voc.max_iter, list(voc.steps), voc.num_classes, voc.mask_on) == (24000, [18000, 22000], 20, False)
    assert [list(s) for s in voc.voc_train] == [["2007", "trainval"], ["2012", "trainval"]]
    assert (coco.max_iter, list(coco.steps), coco.num_classes, coco.mask_on) == (90000, [60000, 80000], 80, True)
    for r in (voc, coco):
        assert (r.ims_per_batch, r.base_lr, r.sync_bn, r.extra_norm) == (16, 0.02, True, True)


def test_det_coco_builds_on_det_voc_and_says_where_each_value_comes_from():
    assert "base: det_voc" in recipe_file("det_coco").read_text()
    text = describe_det_recipe(recipe_file("det_coco"), ["num_workers=2"])
    assert "max_iter: 90000  # det_coco.yaml\n" in text and "base_lr: 0.02  # det_voc.yaml\n" in text
    assert "extra_norm: true  # det_voc.yaml: MoCo's Res5ROIHeadsExtraNorm" in text
    assert "num_workers: 2  # override\n" in text and "roi_size: 14  # default of d3ssl_zoo.detection.recipe\n" in text


@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.slow
def test_finetune_voc_end_to_end_with_resume(tmp_path, fresh_accelerate, caplog):
    data = tmp_path / "VOCdevkit"
    make_voc(data, "2007", "trainval",
             {"a": [("cat", (11, 9, 40, 30), False)], "b": [("dog", (31, 21, 60, 44), False)]})
    make_voc(data, "2012", "trainval", {"c": [("dog", (5, 5, 30, 40), False), ("cat", (35, 2, 60, 20), False)]}, 1)
    make_voc(data, "2007", "test", {"t": [("cat", (11, 9, 40, 30), False), ("dog", (41, 5, 60, 20), True)]}, 2)
    over = dict(TINY, min_size_train=[64], anchor_sizes=[16, 32, 64], ims_per_batch=2, max_iter=2, steps=[3],
                warmup_iters=1, checkpoint_period=1, log_period=1, num_workers=0, sync_bn=False, base_lr=0.01)
    model_dir = tmp_path / "zoo"
    d3ssl_zoo.save_pretrained(d3ssl_zoo.create_model("d3ssl_r18c4", num_classes=0), model_dir, model_name="d3ssl_r18c4")
    logs = []
    out = finetune(load_det_recipe(None, over), str(model_dir), data, tmp_path / "run", evaluate=False, log=logs.append)
    first, second = list_checkpoints(tmp_path / "run")
    assert out["step"] == 2 and (first.name, second.name) == ("step_00000001", "step_00000002")
    assert not list(first.glob("custom_checkpoint_*")) and verify_checkpoint(second)["step"] == 2
    assert any("train: 3 images, 4 objects" in line for line in logs)
    # the same guard as pre-training: no fresh run over another's checkpoints, no resume with another recipe
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        finetune(load_det_recipe(None, over), str(model_dir), data, tmp_path / "run", log=logs.append)
    with pytest.raises(ValueError, match="base_lr: 0.01 -> 0.02"):
        finetune(load_det_recipe(None, dict(over, base_lr=0.02)), str(model_dir), data, tmp_path / "run",
                 resume="auto", log=logs.append)
    optimizer_file = second / "optimizer.bin"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:100])   # a damaged newest checkpoint
    with caplog.at_level("WARNING", logger="d3ssl_zoo.checkpoint"):
        out = finetune(load_det_recipe(None, dict(over, max_iter=3)), str(model_dir), data, tmp_path / "run",
                       resume="auto", log=logs.append)
    assert any(str(second) in r.getMessage() and "optimizer.bin" in r.getMessage() for r in caplog.records)
    assert out["step"] == 3 and f"[finetune_det] resumed from {first} at step 1" in logs
    assert [verify_checkpoint(c)["step"] for c in list_checkpoints(tmp_path / "run")] == [1, 2, 3]
    m = out["metrics"]["bbox"]
    assert set(m) >= {"AP", "AP50", "AP75"} and 0.0 <= m["AP"] <= 100.0
    assert "dog" in m["classes_without_objects"] and "cat" not in m["classes_without_objects"]   # dog only difficult
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["bbox"]["AP50"] == pytest.approx(m["AP50"])
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_finetune_cli_refuses_a_crafted_checkpoint(tmp_path, fresh_accelerate, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("finetune_det", ROOT / "train" / "finetune_det.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    class Marker:   # unpickling it opens the marker for writing: stands for any code a crafted file could run
        def __reduce__(self):
            return (open, (str(tmp_path / "marker"), "w"))

    ckpt = tmp_path / "run" / "checkpoints" / "step_00000010"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 10, "steps_per_epoch": 1}))
    (ckpt / "recipe.yaml").write_text("task: voc\n")
    torch.save({"last_epoch": Marker()}, ckpt / "custom_checkpoint_0.pkl")   # Accelerate's scheduler slot
    rc = cli.main(["--task", "voc", "--model", "d3ssl_r18c4", "--data", str(tmp_path), "--output-dir",
                   str(tmp_path / "run"), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{ckpt / 'custom_checkpoint_0.pkl'}" in err and "could run code" in err
    assert not (tmp_path / "marker").exists()


def test_dataset_flip_is_reproducible_per_epoch(tmp_path):
    make_voc(tmp_path, "2007", "trainval", {str(i): [("cat", (11, 9, 40, 30), False)] for i in range(6)})
    ds = DetectionDataset(read_voc(tmp_path, "2007", "trainval"), train=True, seed=3)
    first = [ds[i][1]["boxes"][0, 0].item() for i in range(6)]
    assert first == [ds[i][1]["boxes"][0, 0].item() for i in range(6)]
    assert set(first) <= {10.0, 64.0 - 40.0}
    ds.set_epoch(1)
    flips = [[ds[i][1]["boxes"][0, 0].item() for i in range(6)]]
    for e in range(2, 6):
        ds.set_epoch(e)
        flips.append([ds[i][1]["boxes"][0, 0].item() for i in range(6)])
    assert any(f != first for f in flips)
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == 2 and targets[0]["labels"].tolist() == [8]          # 'cat' is class 7, +1 background


@pytest.mark.slow
def test_finetune_coco_mask_rcnn_end_to_end(tmp_path, fresh_accelerate):
    make_coco(tmp_path / "ann.json")
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)).save(tmp_path / name)
    over = dict(TINY, task="coco", num_classes=2, mask_on=True, min_size_train=[64], anchor_sizes=[16, 32, 64],
                coco_train=["ann.json", "."], coco_test=["ann.json", "."], ims_per_batch=2, max_iter=2, steps=[3],
                warmup_iters=1, checkpoint_period=2, log_period=1, num_workers=0, sync_bn=False)
    out = finetune(load_det_recipe(None, over), "d3ssl_r18c4", tmp_path, tmp_path / "run", log=lambda s: None)
    assert out["step"] == 2 and "loss_mask" in out["losses"]
    assert set(out["metrics"]) == {"bbox", "segm"}
    for m in out["metrics"].values():
        assert 0.0 <= m["AP"] <= 100.0


@pytest.mark.slow
def test_an_unwritable_metrics_file_keeps_the_printed_ap_and_says_what_is_intact(tmp_path, fresh_accelerate,
                                                                                  monkeypatch):
    from d3ssl_zoo.disk import UnwritableError
    make_coco(tmp_path / "ann.json")
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)).save(tmp_path / name)
    over = dict(TINY, task="coco", num_classes=2, min_size_train=[64], anchor_sizes=[16, 32, 64],
                coco_train=["ann.json", "."], coco_test=["ann.json", "."], ims_per_batch=2, max_iter=1, steps=[3],
                warmup_iters=1, checkpoint_period=1, log_period=1, num_workers=0, sync_bn=False)
    write_text = Path.write_text

    def refuse_metrics(self, *args, **kwargs):
        if self.name == "metrics.json":
            raise PermissionError(13, "Permission denied", str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", refuse_metrics)
    logged = []
    with pytest.raises(UnwritableError, match=r"metrics.json .*the detector is in .*model.safetensors"):
        finetune(load_det_recipe(None, over), "d3ssl_r18c4", tmp_path, tmp_path / "run", log=logged.append)
    assert any(line.startswith("[finetune_det] bbox: AP ") for line in logged)
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_box_head_losses_are_cross_entropy_and_l1_of_the_true_class():
    from d3ssl_zoo.detection.model import box_head_losses
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    deltas = torch.zeros(2, 12)
    deltas[1, 8:12] = torch.tensor([1.0, -1.0, 0.5, 0.0])          # class 2 of RoI 1
    targets = [torch.zeros(2, 4)]
    cls, box = box_head_losses(logits, deltas, [torch.tensor([0, 2])], targets)
    expected_cls = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 2]) / 2
    assert cls == pytest.approx(float(expected_cls))
    assert box == pytest.approx((1 + 1 + 0.5) / 2)                  # L1 sum over fg / sampled RoIs


def test_precise_bn_sets_the_average_of_batch_statistics():
    from d3ssl_zoo.detection.finetune import precise_bn
    bn = torch.nn.BatchNorm1d(2, momentum=0.1)
    batches = [torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[4.0, 5.0], [6.0, 7.0]]),
               torch.tensor([[100.0, 100.0], [100.0, 100.0]])]
    bn.eval()
    assert precise_bn(bn, batches, 2, bn) == 2
    assert bn.running_mean.tolist() == pytest.approx([3.0, 4.0])    # mean of the batch means 1,2 and 5,6
    assert bn.running_var.tolist() == pytest.approx([2.0, 2.0])     # unbiased variance of each batch: 2
    assert bn.momentum == 0.1 and not bn.training


def test_finetune_cli_takes_key_value_overrides_after_other_options(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("finetune_det", ROOT / "train" / "finetune_det.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    base = ["--task", "voc", "--model", "d3ssl_r18c4", "--data", str(tmp_path)]
    # read as an override (and refused as an unknown recipe key), not "unrecognized arguments"
    assert cli.main(base + ["--set", "num_workers=0", "--no-eval", "bogus_key=3"]) == 2
    assert "unknown recipe key 'bogus_key'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(base + ["--no-eval", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err
