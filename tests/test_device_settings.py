"""train.memory_format and d3ssl_zoo.engine.device.apply_device_settings, shared by training and
benchmarks/gpu_check.py: the default leaves model and batches untouched, channels_last converts both, and a
run trains with it."""
import math

import pytest
import torch

import d3ssl_zoo
from d3ssl_zoo.data import PretrainCollator, build_pretrain_dataset, prepare_batch
from d3ssl_zoo.engine import build_method, load_recipe, train
from d3ssl_zoo.engine.device import apply_device_settings
from d3ssl_zoo.tags import recipes_dir

DEMO = recipes_dir() / "demo.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_source, tiny_overrides):
    return tiny_overrides(*make_tiny_source(tmp_path_factory.mktemp("tiny")))


def _method_and_batch(recipe):
    method = build_method(recipe, d3ssl_zoo.create_model(recipe.model.name, pretrained=False,
                                                         **recipe.model.kwargs()))
    dataset = build_pretrain_dataset(recipe.data, recipe.dataset.source, recipe.dataset.proposals,
                                     seed=recipe.train.seed)
    return method, PretrainCollator(recipe.data)([dataset[0], dataset[1]])


def test_memory_format_is_validated_and_defaults_to_contiguous():
    assert load_recipe(DEMO).train.memory_format == "contiguous"
    assert load_recipe(DEMO, ["train.memory_format=channels_last"]).train.memory_format == "channels_last"
    with pytest.raises(ValueError, match=r"train.memory_format must be one of \('contiguous', 'channels_last'\).*"
                                         r"got 'nhwc'"):
        load_recipe(DEMO, ["train.memory_format=nhwc"])


def test_contiguous_leaves_the_model_and_the_batch_as_they_were(tiny):
    recipe = load_recipe(DEMO, tiny)
    method, batch = _method_and_batch(recipe)
    before = {k: (v.data_ptr(), v.stride()) for k, v in method.state_dict().items()}
    prepare = apply_device_settings(recipe, method, torch.device("cpu"))
    assert {k: (v.data_ptr(), v.stride()) for k, v in method.state_dict().items()} == before
    got, want = prepare(dict(batch)), prepare_batch(dict(batch), recipe.data.mean, recipe.data.std)
    assert got.keys() == want.keys() and "x3" in got
    for k in got:
        assert torch.equal(got[k], want[k]) and got[k].stride() == want[k].stride(), k


def test_channels_last_converts_the_weights_and_every_image_batch(tiny):
    recipe = load_recipe(DEMO, tiny + ["train.memory_format=channels_last"])
    method, batch = _method_and_batch(recipe)
    prepare = apply_device_settings(recipe, method, torch.device("cpu"))
    convs = [p for p in method.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    spatial = [p for p in convs if p.shape[-1] > 1]  # a 1x1 kernel's strides fit both formats
    assert spatial and not any(p.is_contiguous() for p in spatial)
    got, want = prepare(dict(batch)), prepare_batch(dict(batch), recipe.data.mean, recipe.data.std)
    for k in ("x1", "x2", "x2s", "x3"):
        assert got[k].is_contiguous(memory_format=torch.channels_last) and not got[k].is_contiguous(), k
        assert torch.equal(got[k], want[k]), k  # the same values, another layout
    assert torch.equal(got["boxes1"], want["boxes1"])
    out = method(got)
    assert math.isfinite(out["loss"].item())


@pytest.mark.slow
def test_a_run_trains_in_channels_last(tiny, tmp_path):
    result = train(load_recipe(DEMO, tiny + ["train.memory_format=channels_last"]), tmp_path / "run")
    assert result.step == result.total_steps == 4  # the NaN guard checks every logged loss: all finite
    convs = [p for p in result.method.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert all(torch.isfinite(v).all() for v in result.method.state_dict().values() if v.is_floating_point())
    exported = d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True, pretrained_cfg_overlay=dict(
        file=str(result.export_dir / "model.safetensors")))
    trained = result.method.backbone.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in exported.state_dict().items())
