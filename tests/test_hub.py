"""Weights in and out, against a Hugging Face cache built by the test (HF_HUB_OFFLINE=1)."""
import hashlib
import json
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch
from timm.models._pretrained import PretrainedCfg

import d3ssl_zoo
from d3ssl_zoo import hub
from d3ssl_zoo.hub import PretrainedWeightsError, sha256_file
from d3ssl_zoo.tags import get_tag

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hf_cache(folder: Path, repo_id: str) -> Path:
    """Lay out ``folder`` as the Hub cache does: refs/main -> snapshots/<commit>/<files>."""
    root = Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo_id.replace("/", "--"))
    if root.exists():
        shutil.rmtree(root)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    shutil.copytree(folder, snap)
    return snap


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return d3ssl_zoo.create_model("d3ssl_r18c4").eval()


def _x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_writes_timm_folder(r18, tmp_path):
    out = d3ssl_zoo.save_pretrained(r18, tmp_path / "demo")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "d3ssl_r18c4" and config["num_classes"] == 0
    assert config["num_features"] == 512
    cfg = config["pretrained_cfg"]
    assert cfg["num_classes"] == 0 and "label_names" not in cfg and "hf_hub_id" not in cfg
    PretrainedCfg(**cfg)  # every key is a timm field, so hf-hub: loading accepts it
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and "arXiv:2303.16947" in card and "license: apache-2.0" in card


def test_model_card_has_paper_numbers_and_recipe(tmp_path):
    m = d3ssl_zoo.create_model("d3ssl_r18c4")
    out = d3ssl_zoo.save_pretrained(m, tmp_path / "x", model_name="d3ssl_r50c4", tag="oimini_800ep",
                                    card_extra={"git_commit": "abc123"})
    card = (out / "README.md").read_text()
    assert "73.1" in card and "55.8" in card
    assert "d3ssl_zoo/recipes/d3ssl_r50c4.oimini_800ep.yaml" in card and "abc123" in card
    # an arXiv preprint is a BibTeX @article with journal=, as CITATION.cff has it
    assert "@article{qiu2023d3ssl," in card and "journal={arXiv preprint arXiv:2303.16947}" in card
    from huggingface_hub import ModelCard  # the Hub reads the metadata block
    data = ModelCard.load(out / "README.md").data
    assert (data.library_name, data.license) == ("timm", "apache-2.0") and "d3ssl_zoo" in data.tags
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["tag"] == "oimini_800ep"


def test_local_file_overlay_round_trip(r18, tmp_path):
    out = d3ssl_zoo.save_pretrained(r18, tmp_path / "m")
    loaded = d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"))).eval()
    assert _same(loaded, r18)
    assert loaded.pretrained_cfg["file"] == str(out / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(_x()), r18(_x()))
    # also through timm and from a .pth (read with weights_only=True)
    torch.save({"state_dict": r18.state_dict()}, tmp_path / "m.pth")
    via_timm = timm.create_model("d3ssl_r18c4", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / "m.pth")))
    assert _same(via_timm, r18)


def test_hub_round_trip_offline(tmp_path):
    torch.manual_seed(5)
    model = d3ssl_zoo.create_model("d3ssl_r50c4.coco_200ep").eval()
    folder = d3ssl_zoo.save_pretrained(model, tmp_path / "export")
    put_in_hf_cache(folder, "d3ssl-zoo/d3ssl_r50c4.coco_200ep")
    loaded = d3ssl_zoo.create_model("d3ssl_r50c4.coco_200ep", pretrained=True).eval()
    assert loaded.pretrained_cfg["source"] == "hf-hub" and COMMIT in loaded.pretrained_cfg["file"]
    assert _same(loaded, model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # a fresh head on top of the headless weights
    with_head = timm.create_model("d3ssl_r50c4.coco_200ep", pretrained=True, num_classes=5)
    assert with_head.fc.out_features == 5
    assert torch.equal(with_head.state_dict()["layer4.2.conv3.weight"], model.state_dict()["layer4.2.conv3.weight"])


def test_hf_hub_prefix_loads_exported_repo(r18, tmp_path):
    folder = d3ssl_zoo.save_pretrained(r18, tmp_path / "export")
    put_in_hf_cache(folder, "someone/my-demo-backbone")
    loaded = timm.create_model("hf-hub:someone/my-demo-backbone", pretrained=True).eval()
    assert isinstance(loaded, d3ssl_zoo.D3SSLResNet) and loaded.num_classes == 0
    assert _same(loaded, r18)


def test_sha256_verified_for_hub_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = d3ssl_zoo.create_model("d3ssl_r50c4.coco_200ep_dconly_prc")
    folder = d3ssl_zoo.save_pretrained(model, tmp_path / "e")
    put_in_hf_cache(folder, "d3ssl-zoo/d3ssl_r50c4.coco_200ep_dconly_prc")
    actual = sha256_file(folder / "model.safetensors")
    entry = get_tag("d3ssl_r50c4.coco_200ep_dconly_prc")

    monkeypatch.setattr(hub.download, "tag_for_hub_id", lambda hub_id: replace(entry, sha256="ab" * 32))
    with pytest.raises(PretrainedWeightsError, match=f"expected {'ab' * 32}, actual {actual}"):
        d3ssl_zoo.create_model("d3ssl_r50c4.coco_200ep_dconly_prc", pretrained=True)

    monkeypatch.setattr(hub.download, "tag_for_hub_id", lambda hub_id: replace(entry, sha256=actual))
    assert _same(d3ssl_zoo.create_model("d3ssl_r50c4.coco_200ep_dconly_prc", pretrained=True), model)


@pytest.mark.parametrize("create", [d3ssl_zoo.create_model, timm.create_model])
def test_unpublished_tag_gives_one_clear_error(create):
    with pytest.raises(PretrainedWeightsError) as e:
        create("soco_r50c4.oimini_200ep_d3aug", pretrained=True)
    msg = str(e.value)
    assert "'soco_r50c4.oimini_200ep_d3aug'" in msg
    assert "d3ssl-zoo/soco_r50c4.oimini_200ep_d3aug" in msg
    assert "d3ssl_zoo/recipes/soco_r50c4.oimini_200ep_d3aug.yaml" in msg
    assert "pretrained_cfg_overlay=dict(file=" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_unreachable_hub_fails_fast_from_cache_only(monkeypatch):
    from huggingface_hub import constants

    calls = []
    real = __import__("huggingface_hub").hf_hub_download

    def spy(*args, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.download, "hub_unreachable", lambda *a, **k: "ConnectError: no route to host")
    monkeypatch.setattr("huggingface_hub.hf_hub_download", spy)
    with pytest.raises(PretrainedWeightsError, match="unreachable"):
        d3ssl_zoo.create_model("d3ssl_r50c4.oimini_800ep", pretrained=True)
    assert calls == [True]


# --- the Hub through huggingface_hub's own HTTP session: proxies, HF_ENDPOINT mirrors -----------------------------

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
               "no_proxy")


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub as on a connected machine: HF_HUB_OFFLINE unset and no proxy unless the test sets one.

    huggingface_hub reads HF_HUB_OFFLINE/HF_ENDPOINT at import and its shared HTTP session reads the proxy
    variables when it is built, so the constants are patched and the session is rebuilt around the test.
    """
    from huggingface_hub import close_session, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    close_session()
    yield monkeypatch
    close_session()


def use_endpoint(monkeypatch, endpoint: str) -> None:
    """HF_ENDPOINT as set before huggingface_hub is imported."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@contextmanager
def serve(handler):
    """A threaded HTTP server on 127.0.0.1 (a free port) for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _DeadProxy(BaseHTTPRequestHandler):
    """Records each request line and forwards nothing (502), as a proxy without a route out."""

    seen: list

    def _refuse(self):
        self.seen.append(self.requestline)
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_CONNECT = do_HEAD = do_GET = _refuse

    def log_message(self, *args):
        pass


def test_hub_probe_goes_through_the_proxy_and_falls_back_to_the_cache(online, r18, tmp_path):
    use_endpoint(online, "https://hub.example.invalid")  # never resolved here: only the proxy sees the name
    handler = type("Proxy", (_DeadProxy,), {"seen": []})
    overlay = dict(hf_hub_id="proxied-org/tiny-r18")
    with serve(handler) as proxy:
        online.setenv("HTTPS_PROXY", proxy)
        with pytest.raises(PretrainedWeightsError) as e:
            d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True, pretrained_cfg_overlay=overlay)
        assert handler.seen and set(handler.seen) == {"CONNECT hub.example.invalid:443 HTTP/1.1"}
        msg = str(e.value)
        assert f"the Hub (https://hub.example.invalid through proxy {proxy}) is unreachable (ProxyError" in msg
        assert "proxied-org/tiny-r18" in msg and "pretrained_cfg_overlay=dict(file=" in msg

        folder = d3ssl_zoo.save_pretrained(r18, tmp_path / "export")
        with pytest.raises(ConnectionError, match=f"hub.example.invalid through proxy {proxy} is unreachable"):
            d3ssl_zoo.push_to_hub(folder, "proxied-org/tiny-r18")

        put_in_hf_cache(folder, "proxied-org/tiny-r18")
        handler.seen.clear()
        loaded = d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True, pretrained_cfg_overlay=overlay)
        assert set(handler.seen) == {"CONNECT hub.example.invalid:443 HTTP/1.1"}
    assert _same(loaded, r18) and COMMIT in loaded.pretrained_cfg["file"]


def test_pretrained_downloads_from_an_hf_endpoint_mirror(online, r18, tmp_path):
    folder = d3ssl_zoo.save_pretrained(r18, tmp_path / "export")
    data = (folder / "model.safetensors").read_bytes()
    path = "/mirror-org/tiny-r18/resolve/main/model.safetensors"
    seen = []

    class Mirror(BaseHTTPRequestHandler):
        """The two answers hf_hub_download needs: file metadata (HEAD) and the bytes (GET)."""

        def do_HEAD(self, body=False):
            seen.append((self.command, self.path))
            if self.path != path:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self):
            self.do_HEAD(body=True)

        def log_message(self, *args):
            pass

    with serve(Mirror) as mirror:
        use_endpoint(online, mirror)
        loaded = d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True,
                                        pretrained_cfg_overlay=dict(hf_hub_id="mirror-org/tiny-r18"))
    assert _same(loaded, r18)
    assert loaded.pretrained_cfg["source"] == "hf-hub"
    assert f"models--mirror-org--tiny-r18/snapshots/{COMMIT}/model.safetensors" in loaded.pretrained_cfg["file"]
    assert {p for _, p in seen} == {path} and ("GET", path) in seen and ("HEAD", path) in seen


def test_no_weights_for_demo_architecture():
    with pytest.raises(PretrainedWeightsError, match="(?s)no published weights.*train/pretrain.py"):
        d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True)


def test_corrupted_and_truncated_files(r18, tmp_path):
    out = d3ssl_zoo.save_pretrained(r18, tmp_path / "m")
    data = (out / "model.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    for name in ("trunc.safetensors", "junk.safetensors"):
        with pytest.raises(PretrainedWeightsError, match=f"{name}: not a valid safetensors file"):
            d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(tmp_path / name)))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="weights_only=True"):
        hub.load_state_dict_file(tmp_path / "junk.pth")
    with pytest.raises(PretrainedWeightsError, match="not found"):
        hub.load_state_dict_file(tmp_path / "missing.safetensors")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pth_is_never_unpickled(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(PretrainedWeightsError, match="weights_only=True"):
        hub.load_state_dict_file(tmp_path / "evil.pth")


def test_mismatched_checkpoint_lists_keys(tmp_path):
    sd = d3ssl_zoo.create_model("d3ssl_r18c4").state_dict()
    sd = {("module.encoder." + k): v for k, v in sd.items()}
    from safetensors.torch import save_file
    save_file(sd, str(tmp_path / "soco_like.safetensors"))
    with pytest.raises(PretrainedWeightsError,
                       match=r"missing keys \[.*unexpected keys \[module\.encoder\..*d3ssl-zoo convert"):
        d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "soco_like.safetensors")))


def test_wrong_shapes_name_the_file_and_the_tensors(tmp_path):
    sd = d3ssl_zoo.create_model("d3ssl_r18c4").state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    from safetensors.torch import save_file
    save_file(sd, str(tmp_path / "other.safetensors"))
    with pytest.raises(PretrainedWeightsError, match=r"other\.safetensors does not fit this architecture: 1 tensors "
                                                     r"have other shapes \(\[conv1\.weight: file \(64, 3, 3, 3\), "
                                                     r"model \(64, 3, 7, 7\)\]\)"):
        d3ssl_zoo.create_model("d3ssl_r18c4", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "other.safetensors")))


def test_push_to_hub_refuses_offline_and_incomplete(r18, tmp_path):
    out = d3ssl_zoo.save_pretrained(r18, tmp_path / "m")
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE"):
        d3ssl_zoo.push_to_hub(out, "someone/repo")
    (out / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        d3ssl_zoo.push_to_hub(out, "someone/repo")


def test_load_backbone_accepts_every_kind_of_spec(r18, tmp_path):
    out = d3ssl_zoo.save_pretrained(r18, tmp_path / "m")
    assert _same(d3ssl_zoo.load_backbone(str(out)), r18)
    tv = d3ssl_zoo.load_backbone("torchvision:resnet18")
    assert isinstance(tv, d3ssl_zoo.D3SSLResNet) and tv.num_classes == 1000 and not tv.training
    ck = d3ssl_zoo.load_backbone("d3ssl_r18c4", checkpoint=str(out / "model.safetensors"))
    assert _same(ck, r18)
    timm_r18 = d3ssl_zoo.load_backbone("resnet18", checkpoint=str(out / "model.safetensors"))
    assert torch.equal(timm_r18.state_dict()["layer1.0.conv1.weight"], r18.state_dict()["layer1.0.conv1.weight"])
    assert d3ssl_zoo.load_backbone("d3ssl_r18c4").num_classes == 0
    with pytest.raises(ValueError, match="Unknown model 'resnet5O'.*Did you mean"):
        d3ssl_zoo.load_backbone("resnet5O")
    with pytest.raises(ValueError, match="torchvision:resnet50"):
        d3ssl_zoo.load_backbone("torchvision:vgg16")


def test_padding_mode_travels_with_the_export(tmp_path):
    # The weights alone do not say how the convs pad: config.json's model_args carries a non-default
    # mode, and every way of loading the folder builds the model with it.
    torch.manual_seed(0)
    model = d3ssl_zoo.create_model("d3ssl_r18c4", padding_mode="circular").eval()
    folder = d3ssl_zoo.save_pretrained(model, tmp_path / "export")
    assert json.loads((folder / "config.json").read_text())["model_args"] == {"padding_mode": "circular"}
    put_in_hf_cache(folder, "someone/circular-backbone")
    x = torch.randn(1, 3, 64, 64)
    for loaded in (d3ssl_zoo.load_backbone(str(folder)),
                   timm.create_model("hf-hub:someone/circular-backbone", pretrained=True).eval()):
        assert loaded.padding_mode == "circular" and loaded.layer2[1].conv1.padding_mode == "circular"
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
    plain = d3ssl_zoo.save_pretrained(d3ssl_zoo.create_model("d3ssl_r18c4"), tmp_path / "plain")
    assert "model_args" not in json.loads((plain / "config.json").read_text())  # the zoo's own models: unchanged
