"""OpenImage-MINI builder (Sec. 5.1), its ``d3ssl-zoo oimini`` command and Tab. 2 statistics."""
import csv
import json

import numpy as np
from PIL import Image

from d3ssl_zoo.cli import main
from d3ssl_zoo.data.openimages_mini import dataset_statistics, format_statistics, load_class_map, select_images


def test_class_map_covers_80_coco_classes():
    m = load_class_map()
    assert len(set(m.values())) == 80
    assert m["Man"] == m["Person"] == 1 and m["Flying disc"] == 34 and m["Doughnut"] == 60


def test_select_images_respects_both_criteria():
    # boxes: image index and COCO id of each box (0 = not shared)
    image = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4])
    coco = np.array([1, 1, 0, 17, 17, 0, 1, 17, 1])
    budget = {1: 3, 17: 1}
    for seed in range(10):
        kept = select_images(image, coco, budget, 5, seed)
        assert 1 not in kept and 2 not in kept  # over the cat budget / no shared object
        used = {c: int(((coco == c) & np.isin(image, kept)).sum()) for c in budget}
        assert all(used[c] <= budget[c] for c in budget)
        assert len(kept) >= 2


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)


def test_builder_writes_coco_json_and_statistics(tmp_path, capsys):
    write_csv(tmp_path / "classes.csv", None, [["/m/p", "Person"], ["/m/m", "Man"], ["/m/c", "Cat"],
                                               ["/m/t", "Tortoise"]])
    hdr = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
           "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
    rows = [["a", "x", "/m/m", 1, 0.1, 0.5, 0.1, 0.5, 0, 0, 0, 0, 0],
            ["a", "x", "/m/t", 1, 0.5, 0.9, 0.5, 0.9, 0, 0, 1, 0, 0],
            ["b", "x", "/m/c", 1, 0.0, 1.0, 0.0, 1.0, 0, 0, 0, 0, 0],
            ["b", "x", "/m/c", 1, 0.0, 0.5, 0.0, 0.5, 0, 0, 0, 0, 0],
            ["c", "x", "/m/t", 1, 0.0, 1.0, 0.0, 1.0, 0, 0, 0, 0, 0],
            ["d", "x", "/m/p", 1, 0.2, 0.4, 0.2, 0.6, 0, 0, 0, 0, 0],
            ["d", "x", "/m/c", 1, 0.0, 0.5, 0.5, 1.0, 0, 0, 0, 0, 0],
            ["e", "x", "/m/zzz", 1, 0, 1, 0, 1, 0, 0, 0, 0, 0]]
    write_csv(tmp_path / "boxes.csv", hdr, rows)
    (tmp_path / "imgs").mkdir()
    for name in "abcd":
        Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(tmp_path / "imgs" / f"{name}.jpg")
    coco = {"images": [{"id": 1}, {"id": 2}], "annotations": [
        {"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 17}],
        "categories": []}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out = tmp_path / "mini.json"
    assert main(["oimini", "--boxes", str(tmp_path / "boxes.csv"), "--classes", str(tmp_path / "classes.csv"),
                 "--images", str(tmp_path / "imgs"), "--coco", str(tmp_path / "coco.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "OpenImage-MINI" in printed.out and "#Obj/Img" in printed.out
    assert "1 labels missing" in printed.err
    mini = json.loads(out.read_text())
    names = sorted(im["openimages_id"] for im in mini["images"])
    assert names == ["a", "d"]  # b exceeds the cat budget, c has no COCO class
    a = next(im for im in mini["images"] if im["openimages_id"] == "a")
    boxes = [x for x in mini["annotations"] if x["image_id"] == a["id"]]
    assert len(boxes) == 2 and any(x["iscrowd"] == 1 for x in boxes)
    assert np.allclose(sorted(x["bbox"] for x in boxes)[0], [8, 4, 32, 16])
    stats = dataset_statistics(mini)
    assert stats == {"images": 2, "objects_per_image": 2.0, "categories_per_image": 2.0, "categories": 4}
    assert "2" in format_statistics({"x": stats})
