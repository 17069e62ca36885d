"""Tests of d3ssl_zoo.engine and train/pretrain.py: recipes, resume, NaN guard, checkpoints, export."""
import errno
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from torch import nn

import d3ssl_zoo
from d3ssl_zoo.checkpoint import (
    FILES_FILE,
    DamagedCheckpointError,
    UnsafeCheckpointError,
    check_output_dir,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    verify_checkpoint,
)
from d3ssl_zoo.disk import DiskFullError
from d3ssl_zoo.engine import (
    NonFiniteLossError,
    UnknownRecipeKeyError,
    describe_recipe,
    list_checkpoints,
    load_recipe,
    train,
    valid_keys,
)
from d3ssl_zoo.engine import trainer as trainer_module
from d3ssl_zoo.engine.config import REPLACED_KEYS
from d3ssl_zoo.method import D3SSL
from d3ssl_zoo.recipe import resolve_recipe_file
from d3ssl_zoo.tags import recipes_dir

ROOT = Path(__file__).resolve().parents[1]
RECIPES = recipes_dir()
_spec = importlib.util.spec_from_file_location("pretrain", ROOT / "train" / "pretrain.py")  # a script, not a module
pretrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_source, tiny_overrides):
    """The overrides that run the demo recipe, shrunk, on a tiny source of 8 images (4 steps)."""
    return tiny_overrides(*make_tiny_source(tmp_path_factory.mktemp("tiny")))


def tiny_recipe(tiny, *extra):
    return load_recipe(RECIPES / "demo.yaml", tiny + list(extra))


def method_state(method):
    return {k: v.clone() for k, v in method.state_dict().items()}


# --- recipes ---------------------------------------------------------------------------------------------------------

def _flat_keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and k != "extra":
            yield from _flat_keys(v, f"{prefix}{k}.")
        else:
            yield prefix + k


def test_every_tag_has_a_complete_commented_recipe():
    names = {t.name for t in d3ssl_zoo.TAGS}
    assert len(names) == 13
    files = {p.stem for p in RECIPES.glob("*.yaml") if not p.stem.startswith("det_")}
    assert names | {"demo"} <= files
    for name in names | {"demo"}:
        path = RECIPES / f"{name}.yaml"
        recipe = load_recipe(path)
        if name != "demo":
            assert recipe.tag == name and recipe.model.name == name.split(".")[0]
        assert sorted(_flat_keys(resolve_recipe_file(path)[0])) == sorted(valid_keys()), name
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and not line.endswith(":"):
                assert "  # " in line, f"{name}: every hyper-parameter needs a source comment: {line!r}"


def test_recipes_state_only_what_differs_from_their_base(tmp_path, capsys):
    # every derived recipe is a base: plus a few keys
    for path in [*RECIPES.glob("*.yaml"), *(ROOT / "experiments" / "recipes").glob("*.yaml")]:
        raw = yaml.safe_load(path.read_text())
        if path.stem in ("det_voc", "d3ssl_r50c4.coco_800ep", "demo"):
            assert "base" not in raw
            continue
        assert "base" in raw and len(list(_flat_keys(raw))) <= 12, path.name
    _, origin = resolve_recipe_file(RECIPES / "soco_r50c4.oimini_200ep.yaml")
    assert origin["train.epochs"].name == "soco_r50c4.oimini_200ep.yaml"
    assert origin["method.name"].name == "soco_r50c4.coco_800ep.yaml"  # the SoCo base
    assert origin["optim.base_lr"].name == "d3ssl_r50c4.coco_800ep.yaml"  # its base in turn
    text = describe_recipe(RECIPES / "soco_r50c4.oimini_200ep.yaml", ["train.epochs=3"])
    assert "  epochs: 3  # override\n" in text
    assert "  name: soco  # soco_r50c4.coco_800ep.yaml: SoCo baseline" in text
    assert "  base_lr: 1.0  # d3ssl_r50c4.coco_800ep.yaml: SoCo: LARS lr per base_batch images" in text
    assert pretrain.main(["--print-recipe", "--recipe", str(ROOT / "experiments" / "recipes" / "d3ssl_dp1.yaml")]) == 0
    out = capsys.readouterr().out
    assert "  dp_proposals: 1  # d3ssl_dp1.yaml:" in out and "  roi_size: 7  # d3ssl.yaml:" in out
    assert "recipes/demo.yaml: ours: the 160 px scenes at 0.8x" in out  # an experiment's base: the packaged demo
    # a base that is missing, or a cycle, names the files
    (tmp_path / "a.yaml").write_text("base: b\ntag: x\n")
    with pytest.raises(FileNotFoundError, match=r"a.yaml: its base 'b' is neither .*b.yaml nor a recipe shipped"):
        load_recipe(tmp_path / "a.yaml")
    # a recipe outside the package names a packaged one as its base; a file beside it wins over the package
    (tmp_path / "mine.yaml").write_text("base: demo\ntrain:\n  epochs: 3\n")
    mine, demo = load_recipe(tmp_path / "mine.yaml"), load_recipe(RECIPES / "demo.yaml")
    assert mine.train.epochs == 3 and mine.tag == demo.tag and mine.data == demo.data
    (tmp_path / "demo.yaml").write_text("tag: local\n")
    assert load_recipe(tmp_path / "mine.yaml").tag == "local"
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match=r"recipe bases form a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_recipe(tmp_path / "a.yaml")


def test_recipes_express_the_ablation_table():
    def aug(name):
        d = load_recipe(RECIPES / f"{name}.yaml").data
        return {k for k in ("prc", "prm", "rbj", "soco_cutout", "box_jitter", "depositioning") if getattr(d, k)}
    assert aug("d3ssl_r50c4.coco_800ep") == {"prc", "prm", "rbj", "depositioning"}
    assert aug("d3ssl_r50c4.coco_200ep_dconly") == {"prc", "prm", "rbj"}
    assert aug("d3ssl_r50c4.coco_200ep_dconly_noaug") == set()
    assert aug("d3ssl_r50c4.coco_200ep_dconly_cutout") == {"soco_cutout"}
    assert aug("d3ssl_r50c4.coco_200ep_dconly_jitter_prc") == {"box_jitter", "prc"}
    assert aug("d3ssl_r50c4.coco_200ep_dconly_prc") == {"prc"}
    assert aug("d3ssl_r50c4.coco_200ep_dconly_prc_rbj") == {"prc", "rbj"}
    assert aug("soco_r50c4.oimini_200ep") == {"soco_cutout"}
    assert aug("soco_r50c4.oimini_200ep_d3aug") == {"prc", "prm", "rbj"}
    assert load_recipe(RECIPES / "soco_r50c4.coco_800ep.yaml").method.name == "soco"


def test_unknown_override_key_lists_valid_keys(capsys):
    with pytest.raises(UnknownRecipeKeyError) as e:
        load_recipe(RECIPES / "demo.yaml", ["method.tua=0.1"])
    msg = str(e.value)
    assert "'method.tua'" in msg and "did you mean method.tau" in msg
    assert all(k in msg for k in valid_keys())
    assert pretrain.main(["train.epochz=3"]) == 2
    assert "unknown recipe key 'train.epochz'" in capsys.readouterr().err


def test_overrides_are_accepted_after_options(capsys):
    assert pretrain.main(["train.epochs=1", "--no-eval", "train.epochz=3"]) == 2
    assert "unknown recipe key 'train.epochz'" in capsys.readouterr().err  # parsed, not "unrecognized arguments"


@pytest.mark.parametrize("tau", ["0", "-1"])
def test_temperature_must_be_positive(tau, capsys):
    with pytest.raises(ValueError, match=rf"method.tau must be > 0 .*got {float(tau)}"):
        load_recipe(RECIPES / "demo.yaml", [f"method.tau={tau}"])
    assert pretrain.main([f"method.tau={tau}"]) == 2
    assert "method.tau must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["method.bn_groups=0"], "method.bn_groups must be >= 1"),
    (["method.bn_groups=64"], r"method.bn_groups=64 is more than the micro-batch train.batch_size=16"),
    (["method.bn_groups=2"], None),
])
def test_bn_groups_are_checked_against_method_and_batch(overrides, message):
    if message is None:
        assert load_recipe(RECIPES / "demo.yaml", overrides).method.bn_groups == 2
    else:
        with pytest.raises(ValueError, match=message):
            load_recipe(RECIPES / "demo.yaml", overrides)
    with pytest.raises(ValueError, match="SoCo's BYOL loss has no negatives"):
        load_recipe(ROOT / "experiments" / "recipes" / "soco.yaml", ["method.bn_groups=2"])


def test_malformed_recipe_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method:\n  tau: 0.2\ntrain: [epochs: 1\n")
    with pytest.raises(ValueError, match=r"recipe file .*bad\.yaml is not valid YAML at line 4.*"
                                         r"while parsing a flow sequence started at line 3"):
        load_recipe(bad)
    assert pretrain.main(["--recipe", str(bad)]) == 2
    assert "bad.yaml is not valid YAML at line" in capsys.readouterr().err
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="not a mapping of sections"):
        load_recipe(bad)


def test_override_values_are_typed():
    r = load_recipe(RECIPES / "demo.yaml", ["method.tau=0.1", "data.crop_scale=[0.5, 1.0]", "train.epochs=3"])
    assert r.method.tau == 0.1 and r.data.crop_scale == (0.5, 1.0) and r.train.epochs == 3
    r = load_recipe(RECIPES / "d3ssl_r50c4.coco_800ep.yaml", ["train.mixed_precision=no", "dataset.proposals=null"])
    assert r.train.mixed_precision == "no" and r.dataset.proposals is None  # not YAML's boolean 'no'
    with pytest.raises(TypeError, match="train.epochs must be an integer"):
        load_recipe(RECIPES / "demo.yaml", ["train.epochs=three"])
    with pytest.raises(ValueError, match="method.name=soco needs data.views=soco"):
        load_recipe(RECIPES / "demo.yaml", ["method.name=soco"])


# --- the loop ---------------------------------------------------------------------------------------------------------

class Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


@pytest.mark.slow
def test_resume_gives_identical_weights(tiny, tmp_path, monkeypatch):
    straight = train(tiny_recipe(tiny), tmp_path / "straight")
    assert straight.step == straight.total_steps == 4

    real_save = trainer_module.save_checkpoint

    def save_then_die(accelerator, output_dir, state, *args, **kwargs):
        path = real_save(accelerator, output_dir, state, *args, **kwargs)
        if state["step"] == 2:
            raise Killed
        return path

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(tiny_recipe(tiny), tmp_path / "resumed")
    monkeypatch.undo()
    saved = json.loads((list_checkpoints(tmp_path / "resumed")[-1] / "trainer_state.json").read_text())
    assert saved["step"] == 2 and saved["batch_in_epoch"] == 2  # stopped mid-epoch

    resumed = train(tiny_recipe(tiny), tmp_path / "resumed", resume="auto")
    assert resumed.step == 4
    a, b = method_state(straight.method), method_state(resumed.method)
    assert a.keys() == b.keys()
    for k in a:  # student, teacher (so the momentum schedule continued), queue keys and pointer
        assert torch.equal(a[k], b[k]), k
    assert int(b["queue.ptr"]) == (4 * 2 * 2 * 2) % 48  # steps x 2 views x B x K
    # the EMA moved the teacher away from the student, so the teacher check above tests the schedule
    assert not torch.equal(b["student.projector.0.weight"], b["teacher.projector.0.weight"])
    # keep_last=2, and no half-written checkpoint left behind
    names = [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()]
    assert sorted(names) == ["step_00000003", "step_00000004"]


@pytest.mark.slow
def test_export_loads_in_the_zoo_format(tiny, tmp_path):
    result = train(tiny_recipe(tiny, "train.checkpoint_every=100"), tmp_path / "run")
    model = d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(result.export_dir / "model.safetensors")))
    trained = result.method.backbone.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert (result.export_dir / "config.json").is_file() and (result.export_dir / "README.md").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000004"]  # the final one


@pytest.mark.slow
def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tiny, tmp_path, monkeypatch):
    real_forward = D3SSL.forward
    calls = []

    def nan_at_third_step(self, batch):
        out = real_forward(self, batch)
        calls.append(1)
        if len(calls) == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(D3SSL, "forward", nan_at_third_step)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        train(tiny_recipe(tiny), run)
    last = list_checkpoints(run)[-1]
    assert "non-finite loss at step 2" in str(e.value) and str(last) in str(e.value)
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 2
    from safetensors.torch import load_file
    weights = load_file(str(last / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not list((run / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_pretrain_refuses_to_mix_runs(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--output-dir", str(out), "--no-eval"] + tiny + ["train.checkpoint_every=100"]
    assert pretrain.main(args) == 0
    assert "pretrained_cfg_overlay=dict(file=" in capsys.readouterr().out
    assert pretrain.main(args + ["--resume", "none"]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err
    assert pretrain.main(args + ["method.tau=0.3"]) == 1
    assert "method.tau: 0.2 -> 0.3" in capsys.readouterr().err


@pytest.mark.slow
def test_soco_recipe_trains_through_the_engine(tiny, tmp_path):
    recipe = load_recipe(RECIPES / "soco_r50c4.oimini_200ep_d3aug.yaml", tiny + [
        "model.name=d3ssl_r18c4", "train.checkpoint_every=100",
        "train.mixed_precision=no"])  # Accelerate fixes the precision once per process
    result = train(recipe, tmp_path / "soco")
    assert result.step == 4 and hasattr(result.method, "predictor") and not hasattr(result.method, "queue")
    assert (result.export_dir / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_recipes_padding_mode_reaches_the_trained_model_its_export_and_the_ladder(tiny, tmp_path):
    from experiments import ladder

    result = train(tiny_recipe(tiny, "model.padding_mode=circular", "train.mixed_precision=no"), tmp_path / "c")
    config = json.loads((result.export_dir / "config.json").read_text())
    assert config["model_args"] == {"padding_mode": "circular"}
    for backbone in (result.method.backbone, d3ssl_zoo.load_backbone(str(result.export_dir)),
                     ladder.backbone_from_checkpoint(result.last_checkpoint)):
        assert backbone.padding_mode == "circular" and backbone.layer4[0].conv1.padding_mode == "circular"
    with pytest.raises(ValueError, match=r"model.padding_mode must be one of .*got 'wrap'"):
        tiny_recipe(tiny, "model.padding_mode=wrap")


@pytest.mark.slow
def test_demo_on_scenes_reports_oknn_against_random_init(tmp_path, capsys):
    # the demo command on a tiny scene set: trains, exports, then O-KNN random init vs trained
    source = "scenes:num_pretrain=8,num_train=24,num_val=6,image_size=96,object_size=40-56,seed=2"
    args = ["--output-dir", str(tmp_path / "demo"), "--eval-short-side", "96", f"dataset.source={source}",
            "data.image_size=64", "data.small_size=32", "method.roi_size=4", "method.roi_size_small=2",
            "method.proj_hidden_dim=32", "method.proj_dim=16", "method.queue_size=64", "train.global_batch=4",
            "train.batch_size=4",
            "train.epochs=1", "train.tracker=none"]
    assert pretrain.main(args) == 0
    out = capsys.readouterr().out
    assert f"O-KNN (Sec. 5.3) on the labelled split of '{source}' (96 px short side):" in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("random init", "trained  "))]
    assert len(rows) == 2 and all("24 bank objects" in r and "10 classes" in r for r in rows)
    assert "trained - random init:" in out


# --- checkpoints: atomic, verified, never running code -------------------------------------------------------------

class Marker:
    """Unpickling it opens ``path`` for writing: stands for any code a crafted checkpoint could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def tiny_run(out: Path, steps=(1, 2)):
    """A linear model trained with momentum SGD, checkpointed at ``steps`` into ``out``."""
    acc = Accelerator()
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = acc.prepare(model, opt)
    for step in steps:
        model(torch.ones(3, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        save_checkpoint(acc, out, {"step": step}, {"lr": 0.1, "model": {"width": 4}}, keep_last=5)
    return acc, model, opt


def test_checkpoint_lists_its_files_and_restores_the_state(tmp_path):
    _, model, opt = tiny_run(tmp_path / "run")
    last = list_checkpoints(tmp_path / "run")[-1]
    files = json.loads((last / FILES_FILE).read_text())
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(files)
    assert all((last / name).stat().st_size == size for name, size in files.items())
    assert not list(last.glob("custom_checkpoint_*"))
    acc = Accelerator()
    fresh = nn.Linear(4, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh, fresh_opt = acc.prepare(fresh, fresh_opt)
    assert load_checkpoint(acc, last) == {"step": 2}
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"],
                       opt.state_dict()["state"][0]["momentum_buffer"])


@pytest.mark.parametrize("name, damage", [("optimizer.bin", "truncate"), ("model.safetensors", "truncate"),
                                          ("model.safetensors", "delete"), ("random_states_0.pkl", "empty")])
def test_resume_auto_skips_a_damaged_checkpoint(tmp_path, caplog, name, damage):
    tiny_run(tmp_path / "run")
    first, newest = list_checkpoints(tmp_path / "run")
    victim = newest / name
    if damage == "delete":
        victim.unlink()
    else:
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    with caplog.at_level("WARNING", logger="d3ssl_zoo.checkpoint"):
        assert resolve_resume("auto", tmp_path / "run") == first
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert str(newest) in warned and name in warned and f"resuming from {first}" in warned
    with pytest.raises(DamagedCheckpointError, match=f"{name}.*--resume auto takes the newest intact"):
        resolve_resume(str(newest), tmp_path / "run")
    (first / "optimizer.bin").write_bytes(b"")
    with pytest.raises(DamagedCheckpointError, match="every checkpoint under .* is damaged"):
        resolve_resume("auto", tmp_path / "run")


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_crafted_pickle_is_refused_without_running(tmp_path, name):
    acc, _, _ = tiny_run(tmp_path / "run")
    newest = list_checkpoints(tmp_path / "run")[-1]
    marker = tmp_path / "marker"
    crafted = newest / name
    torch.save({"state": Marker(marker)}, crafted)
    torch.load(crafted, weights_only=False)  # what Accelerate does with custom_checkpoint_*.pkl
    assert marker.exists()
    marker.unlink()
    listed = json.loads((newest / FILES_FILE).read_text())  # a consistent forgery
    if name in listed:
        listed[name] = crafted.stat().st_size
        (newest / FILES_FILE).write_text(json.dumps(listed))
    for attempt in (lambda: resolve_resume("auto", tmp_path / "run"), lambda: resolve_resume(str(newest), None),
                    lambda: load_checkpoint(acc, newest)):
        with pytest.raises(UnsafeCheckpointError, match=f"{crafted}.*could run code"):
            attempt()
    assert not marker.exists()


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    acc, _, _ = tiny_run(tmp_path / "run")
    before = list_checkpoints(tmp_path / "run")

    def full_disk(folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(acc, "save_state", full_disk)
    with pytest.raises(DiskFullError) as e:
        save_checkpoint(acc, tmp_path / "run", {"step": 3}, {"lr": 0.1}, keep_last=5)
    assert e.value.errno == errno.ENOSPC
    assert f"writing {tmp_path / 'run' / 'checkpoints' / 'step_00000003'}" in str(e.value)
    assert f"the checkpoints written before are intact (newest: {before[-1]})" in str(e.value)
    assert list_checkpoints(tmp_path / "run") == before
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    assert verify_checkpoint(before[-1]) == {"step": 2}


def test_a_checkpoint_from_before_a_key_existed_resumes_under_that_keys_old_behaviour(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    (ckpt / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name": "d3ssl_r18c4"}}))
    old = {"model.padding_mode": "zeros"}
    check_output_dir(tmp_path / "run", {"model": {"name": "d3ssl_r18c4", "padding_mode": "zeros"}}, ckpt, added=old)
    with pytest.raises(ValueError, match=r"model.padding_mode: None -> 'circular'"):
        check_output_dir(tmp_path / "run", {"model": {"name": "d3ssl_r18c4", "padding_mode": "circular"}}, ckpt,
                         added=old)
    with pytest.raises(ValueError, match=r"model.padding_mode: None -> 'zeros'"):  # only the keys named
        check_output_dir(tmp_path / "run", {"model": {"name": "d3ssl_r18c4", "padding_mode": "zeros"}}, ckpt)


def test_a_checkpoint_with_a_replaced_key_resumes_under_its_equivalent(tmp_path):
    """A recipe saved with ``data.prc_area_reading: false`` (PRC's side reading before ``data.prc_rule``)
    resumes under ``data.prc_rule: side``; a value with no equivalent is still named."""
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    (ckpt / "recipe.yaml").write_text(yaml.safe_dump({"data": {"prc_area_reading": False, "prc": True}}))
    check_output_dir(tmp_path / "run", {"data": {"prc_rule": "side", "prc": True}}, ckpt, replaced=REPLACED_KEYS)
    with pytest.raises(ValueError, match=r"data.prc_rule: 'side' -> 'area'"):
        check_output_dir(tmp_path / "run", {"data": {"prc_rule": "area", "prc": True}}, ckpt, replaced=REPLACED_KEYS)
    (ckpt / "recipe.yaml").write_text(yaml.safe_dump({"data": {"prc_area_reading": True, "prc": True}}))
    with pytest.raises(ValueError, match=r"data.prc_area_reading: True -> None"):
        check_output_dir(tmp_path / "run", {"data": {"prc_rule": "area", "prc": True}}, ckpt, replaced=REPLACED_KEYS)


def test_check_output_dir_refuses_to_mix_runs(tmp_path):
    tiny_run(tmp_path / "run", steps=(1,))
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    with pytest.raises(FileExistsError, match="already holds checkpoints of a run .*step_00000001"):
        check_output_dir(tmp_path / "run", {"lr": 0.1, "model": {"width": 4}}, None)
    with pytest.raises(ValueError, match=r"model.width: 4 -> 8"):
        check_output_dir(tmp_path / "run", {"lr": 0.1, "model": {"width": 8}}, ckpt)
    check_output_dir(tmp_path / "run", {"lr": 0.2, "model": {"width": 4}}, ckpt, may_change=("lr",))
    check_output_dir(tmp_path / "other", {"lr": 0.1}, None)
