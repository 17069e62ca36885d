import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

from d3ssl_zoo import D3SSLResNet, PretrainedWeightsError
from d3ssl_zoo.tags import TAGS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hubconf():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_entry_points_are_public(hubconf):
    public = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert public == sorted(t.hub_entry for t in TAGS)
    assert {"d3ssl_r50c4_coco", "d3ssl_r50c4_oimini", "soco_r50c4_coco", "soco_r50c4_oimini"} <= set(public)
    assert hubconf.dependencies == ["torch", "torchvision", "timm", "huggingface_hub", "safetensors"]


def test_entry_points_default_to_pretrained_and_document_numbers(hubconf):
    entry = hubconf.d3ssl_r50c4_oimini
    assert inspect.signature(entry).parameters["pretrained"].default is True
    assert "73.1" in entry.__doc__ and "d3ssl-zoo/d3ssl_r50c4.oimini_800ep" in entry.__doc__
    assert "57.8" in hubconf.d3ssl_r50c4_coco.__doc__


def test_torch_hub_load_local_checkout():
    m = torch.hub.load(str(REPO), "d3ssl_r50c4_coco", source="local", pretrained=False)
    assert isinstance(m, D3SSLResNet) and m.pretrained_cfg["tag"] == "coco_800ep" and m.num_classes == 0
    m = torch.hub.load(str(REPO), "soco_r50c4_oimini_200ep_d3aug", source="local", pretrained=False, num_classes=3)
    assert m.fc.out_features == 3 and m.pretrained_cfg["tag"] == "oimini_200ep_d3aug"
    with pytest.raises(PretrainedWeightsError, match="soco_r50c4.coco_800ep"):
        torch.hub.load(str(REPO), "soco_r50c4_coco", source="local")
