"""The data and checkpoint tools refuse what they could not do before any work, and a destination
that stops being writable costs no finished work: ``d3ssl-zoo proposals``, ``oimini``, ``convert``
and ``export`` through ``d3ssl_zoo.cli.main``, as a user runs them."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors import SafetensorError

import d3ssl_zoo.data.proposal_store as proposal_store
import d3ssl_zoo.data.selective_search as tool
from d3ssl_zoo.cli import main
from d3ssl_zoo.convert.export import check_export_out
from d3ssl_zoo.data.images import folder_records
from d3ssl_zoo.data.proposal_store import ProposalStore

as_root = os.geteuid() == 0  # root writes into read-only (0o555) folders


def make_images(root, n=3):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = np.zeros((48, 64, 3), np.uint8)
        a[:] = rng.integers(0, 255, 3)
        a[8:30, 10:40] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(root / f"img{i}.png")
    return root


def proposals(images, out, *extra):
    return main(["proposals", "--images", str(images), "--out", str(out), "--workers", "1", "--resize-long", "0",
                 "--no-progress", *extra])


@pytest.fixture
def no_search(monkeypatch):
    """Fails the test if the tool searches any image."""
    def searched(*args):
        raise AssertionError("selective search ran before the output was checked")
    monkeypatch.setattr(tool, "process_image", searched)


# --- proposals: option ranges ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, says", [
    ("--resize-long", "-5", "argument --resize-long: -5 is below 0; give a whole number >= 0 (0: the original size)"),
    ("--workers", "0", "argument --workers: 0 is below 1"),
    ("--workers", "-2", "argument --workers: -2 is below 1"),
    ("--min-side", "-1", "argument --min-side: -1 is below 0"),
    ("--flush-every", "0", "argument --flush-every: 0 is below 1"),
])
def test_proposals_refuses_options_out_of_range(tmp_path, capsys, option, value, says):
    images = make_images(tmp_path / "imgs")
    out = tmp_path / "p.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["proposals", "--images", str(images), "--out", str(out), "--no-progress", option, value])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not out.exists()


def test_proposals_resize_long_zero_keeps_the_original_size(tmp_path):
    images = make_images(tmp_path / "imgs", n=1)
    assert proposals(images, tmp_path / "p.safetensors") == 0
    store = ProposalStore(tmp_path / "p.safetensors")
    assert store.metadata["resize_long"] == "None" and store.fallback.tolist() != [3]  # not the whole-image box
    with pytest.raises(ValueError, match="resize_long must be a long side in pixels"):
        tool.make_proposals(folder_records(images), tmp_path / "q.safetensors", resize_long=-5, progress=False)


# --- proposals: the destination -------------------------------------------------------------------------------------

def test_proposals_checks_the_output_before_any_search(tmp_path, capsys, no_search):
    images = make_images(tmp_path / "imgs")
    (tmp_path / "a_file").write_text("not a folder")
    assert proposals(images, tmp_path / "a_file" / "sub" / "p.safetensors") == 2
    err = capsys.readouterr().err
    assert f"cannot write proposal file {tmp_path / 'a_file' / 'sub' / 'p.safetensors'}" in err
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in err
    assert proposals(images, images) == 2
    assert f"proposal file {images} is a directory" in capsys.readouterr().err
    (tmp_path / "q.safetensors.parts").write_text("")
    assert proposals(images, tmp_path / "q.safetensors") == 2
    assert "keeps the resumable parts" in capsys.readouterr().err


@pytest.mark.skipif(as_root, reason="root may write into a read-only folder")
def test_proposals_refuses_a_read_only_folder_before_any_search(tmp_path, capsys, no_search):
    images = make_images(tmp_path / "imgs")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        assert proposals(images, locked / "p.safetensors") == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert f"cannot write proposal file {locked / 'p.safetensors'}: {locked} is not writable" in err


def test_proposals_folder_unwritable_mid_run_keeps_the_parts_and_resumes(tmp_path, capsys, monkeypatch):
    images = make_images(tmp_path / "imgs", n=3)
    out = tmp_path / "p.safetensors"
    real = proposal_store.save_file
    writes = []

    def denied_after_the_first(tensors, filename, metadata=None):  # what safetensors raises on EACCES
        writes.append(filename)
        if len(writes) > 1:
            raise SafetensorError(f'Error while serializing: I/O error: Permission denied (os error 13) at path '
                                  f'"{filename}"')
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(proposal_store, "save_file", denied_after_the_first)
    assert proposals(images, out, "--flush-every", "1") == 2
    err = capsys.readouterr().err
    parts = tmp_path / "p.safetensors.parts"
    assert f"cannot write {parts / 'part-00001.safetensors'} (Permission denied)" in err
    assert f"1 of 3 images are safe in {parts}, and a rerun of the same command keeps them" in err
    assert f"the 1 finished since the last save are computed again. Make {parts} writable again" in err
    assert "Traceback" not in err and sorted(os.listdir(parts)) == ["part-00000.safetensors"]

    monkeypatch.setattr(proposal_store, "save_file", real)
    searched = []
    search = tool.process_image
    monkeypatch.setattr(tool, "process_image", lambda r, *a: searched.append(r.image_id) or search(r, *a))
    assert proposals(images, out) == 0
    assert "1 already done, 2 computed now" in capsys.readouterr().out
    assert sorted(searched) == [1, 2] and ProposalStore(out).image_ids.tolist() == [0, 1, 2] and not parts.exists()


def test_proposals_parts_left_next_to_a_complete_file_do_not_break_the_rerun(tmp_path, capsys):
    images = make_images(tmp_path / "imgs", n=2)
    out = tmp_path / "p.safetensors"
    assert proposals(images, out) == 0
    parts = tmp_path / "p.safetensors.parts"  # what a run whose parts folder could not be removed leaves
    parts.mkdir()
    shutil.copy(out, parts / "part-00000.safetensors")
    capsys.readouterr()
    assert proposals(images, out) == 0
    assert "2 already done, 0 computed now" in capsys.readouterr().out
    assert ProposalStore(out).image_ids.tolist() == [0, 1] and not parts.exists()


# --- convert and export ---------------------------------------------------------------------------------------------

@pytest.fixture
def r18_checkpoint(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_convert_onto_an_existing_file_says_so(tmp_path, capsys, r18_checkpoint):
    target = tmp_path / "weights.txt"
    target.write_text("mine")
    assert main(["convert", str(r18_checkpoint), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"output folder {target} is an existing file" in err and "remove the file or choose another" in err
    assert target.read_text() == "mine"


def test_convert_keeps_the_users_own_files_in_the_folder_unless_overwrite(tmp_path, capsys, r18_checkpoint,
                                                                          monkeypatch):
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("my project\n")
    import d3ssl_zoo.convert.layouts as layouts
    read = layouts.read_checkpoint
    opened = []
    monkeypatch.setattr(layouts, "read_checkpoint", lambda src: opened.append(src) or read(src))
    assert main(["convert", str(r18_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds README.md not written by save_pretrained" in err and "--overwrite" in err
    assert opened == [] and (out / "README.md").read_text() == "my project\n"  # refused before any reading
    assert main(["convert", str(r18_checkpoint), "--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "README.md").read_text() != "my project\n"
    assert main(["convert", str(r18_checkpoint), "--out", str(out)]) == 0  # our own folder: written again


def test_convert_of_a_directory_says_it_is_one_and_names_the_file_inside(tmp_path, capsys, r18_checkpoint):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    assert main(["convert", str(folder), "--out", str(tmp_path / "zoo")]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {folder} is a directory; give one checkpoint file (.pth, .pt, .tar or .safetensors)" in err
    assert "does not exist" not in err
    shutil.copy(r18_checkpoint, folder / "epoch_10.pth")
    assert main(["convert", str(folder), "--out", str(tmp_path / "zoo")]) == 2
    assert f"e.g. {folder / 'epoch_10.pth'} (it holds epoch_10.pth)" in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists()


def test_convert_and_export_check_the_destination_first(tmp_path, capsys, r18_checkpoint):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "zoo"
    assert main(["convert", str(r18_checkpoint), "--out", str(out)]) == 2
    assert f"cannot write output folder {out}: {tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err
    zoo = tmp_path / "zoo"
    assert main(["convert", str(r18_checkpoint), "--out", str(zoo)]) == 0
    assert main(["convert", str(r18_checkpoint), "--out", str(zoo)]) == 0  # its own folder: written again
    capsys.readouterr()
    out = tmp_path / "a_file" / "r18.pth"
    assert main(["export", str(zoo), "--to", "torchvision", "--out", str(out)]) == 2
    assert f"cannot write export {out}: {tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err
    assert main(["export", str(zoo), "--to", "torchvision", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path} is a directory; the export is one file" in capsys.readouterr().err


@pytest.mark.skipif(as_root, reason="root may write into a read-only folder")
def test_convert_refuses_a_read_only_folder_before_reading(tmp_path, capsys, r18_checkpoint):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        assert main(["convert", str(r18_checkpoint), "--out", str(locked / "zoo")]) == 2
    finally:
        locked.chmod(0o755)
    assert f"cannot write output folder {locked / 'zoo'}: {locked} is not writable" in capsys.readouterr().err


def test_export_keeps_an_existing_file_unless_overwrite(tmp_path, capsys, r18_checkpoint):
    zoo = tmp_path / "zoo"
    assert main(["convert", str(r18_checkpoint), "--out", str(zoo)]) == 0
    out = tmp_path / "r18_tv.pth"
    out.write_text("someone's file")
    assert main(["export", str(zoo), "--to", "torchvision", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} already exists; choose another output file, or replace it with --overwrite" in err
    assert out.read_text() == "someone's file"
    assert main(["export", str(zoo), "--to", "torchvision", "--out", str(out), "--overwrite"]) == 0
    assert torch.load(out, weights_only=True).keys() == torchvision.models.resnet18().state_dict().keys() - {
        "fc.weight", "fc.bias"}
    assert sorted(os.listdir(tmp_path)) == ["r18.pth", "r18_tv.pth", "zoo"]  # no temporary file left


def test_export_to_detectron2_keeps_existing_config_files(tmp_path):
    config = tmp_path / "d2_pascal_voc_R_50_C4_24k.yaml"
    config.write_text("# my edited config")
    with pytest.raises(ValueError, match=f"{config} already exists; .* --overwrite"):
        check_export_out("detectron2", tmp_path / "d2.pkl")
    check_export_out("detectron2", tmp_path / "d2.pkl", configs=False)
    check_export_out("detectron2", tmp_path / "d2.pkl", overwrite=True)


# --- oimini ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def oimini_inputs(tmp_path):
    with open(tmp_path / "classes.csv", "w", newline="") as f:
        csv.writer(f).writerows([["/m/p", "Person"], ["/m/c", "Cat"]])
    with open(tmp_path / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf"])
        w.writerows([["a", "/m/p", 0.1, 0.5, 0.1, 0.5, 0], ["b", "/m/c", 0.0, 1.0, 0.0, 1.0, 0]])
    (tmp_path / "imgs").mkdir()
    for name in "ab":
        Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(tmp_path / "imgs" / f"{name}.jpg")
    (tmp_path / "coco.json").write_text(json.dumps({"images": [{"id": 1}], "categories": [], "annotations": [
        {"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 17}]}))
    return ["oimini", "--boxes", str(tmp_path / "boxes.csv"), "--classes", str(tmp_path / "classes.csv"),
            "--images", str(tmp_path / "imgs"), "--coco", str(tmp_path / "coco.json")]


def test_oimini_keeps_existing_files_and_checks_the_destination_first(tmp_path, capsys, oimini_inputs):
    out = tmp_path / "mini.json"
    out.write_text("someone's json")
    assert main([*oimini_inputs, "--out", str(out)]) == 2
    assert f"output json {out} already exists; choose another --out, or replace it with --overwrite" in (
        capsys.readouterr().err)
    assert out.read_text() == "someone's json"
    assert main([*oimini_inputs, "--out", str(out), "--overwrite"]) == 0
    assert len(json.loads(out.read_text())["images"]) == 2
    coco = tmp_path / "coco.json"
    assert main([*oimini_inputs, "--out", str(coco), "--overwrite"]) == 2
    assert f"output json {coco} is the input {coco}; choose another --out" in capsys.readouterr().err
    assert json.loads(coco.read_text())["images"] == [{"id": 1}]
    (tmp_path / "a_file").write_text("")
    assert main([*oimini_inputs, "--out", str(tmp_path / "a_file" / "mini.json")]) == 2
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err
    assert main([*oimini_inputs, "--out", str(tmp_path)]) == 2
    assert f"output json {tmp_path} is a directory" in capsys.readouterr().err


def test_oimini_unwritable_at_the_end_says_nothing_was_written(tmp_path, capsys, oimini_inputs, monkeypatch):
    import pathlib

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", denied)
    out = tmp_path / "mini.json"
    assert main([*oimini_inputs, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out} (Permission denied); nothing was written; the selection is seeded (--seed 0)" in err
    assert "Traceback" not in err and not out.exists()
