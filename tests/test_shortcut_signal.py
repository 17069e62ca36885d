"""The methods' shortcut signal: contrastive top-1 (D3SSL) and region matching top-1 (SoCo), logged by the engine."""
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

import d3ssl_zoo
from d3ssl_zoo.method import D3SSL, SoCo, match_top1, nce_logits, nce_top1
from d3ssl_zoo.tags import recipes_dir

B, K, S = 2, 3, 64


def _boxes(g):
    xy = torch.rand(B, K, 2, generator=g) * S / 2
    return torch.cat([xy, xy + torch.rand(B, K, 2, generator=g) * S / 2 + 8], dim=-1)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    b2 = _boxes(g)
    return {"x1": torch.randn(B, 3, S, S, generator=g), "x2": torch.randn(B, 3, S, S, generator=g),
            "x2s": torch.randn(B, 3, S // 2, S // 2, generator=g), "x3": torch.randn(B, 3, S, S, generator=g),
            "boxes1": _boxes(g), "boxes2": b2, "boxes2s": b2 / 2, "boxes3": _boxes(g)}


def test_nce_top1_is_one_where_the_positive_outranks_every_negative():
    logits = torch.tensor([[2.0, 1.0, 1.9], [1.0, 1.0, 0.0], [0.5, 0.7, -1.0]])
    assert nce_top1(logits).tolist() == [1.0, 0.0, 0.0]  # a tie is not a win


def test_match_top1_ranks_each_target_among_the_batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 8, generator=g)
    assert match_top1(3 * z, z).tolist() == [1.0] * 6  # cosine: the scale does not matter
    assert match_top1(z, z.roll(1, dims=0)).tolist() == [0.0] * 6
    p = z.clone()
    p[2] = z[4]
    assert match_top1(p, z).tolist() == [1, 1, 0, 1, 1, 1]


def test_d3ssl_returns_the_contrastive_top1_of_each_loss_term():
    torch.manual_seed(0)
    m = D3SSL(d3ssl_zoo.create_model("d3ssl_r18c4"), proj_hidden_dim=32, proj_dim=16, tau=0.2, queue_size=32,
              depositioning=True)
    batch = _batch()
    negatives = m.queue.keys.clone()
    with torch.no_grad():  # the same embeddings as the forward's (train-mode BN, same batches)
        z_s1, z_s2 = m.student(batch["x1"], batch["boxes1"], 14), m.student(batch["x2s"], batch["boxes2s"], 7)
        z_t1, z_t2 = m.teacher(batch["x1"], batch["boxes1"], 14), m.teacher(batch["x2"], batch["boxes2"], 14)
        z_s3 = m.student(batch["x3"], batch["boxes3"], 14)

    def top1(z, z_pos):
        logits = nce_logits(z, z_pos, negatives, 0.2)
        return (logits[:, 0:1] > logits[:, 1:]).all(dim=1).float()
    out = m(batch)
    assert set(out) == {"loss", "l_dc", "l_dp", "top1_dc", "top1_dp"}
    assert not out["top1_dc"].requires_grad and out["top1_dc"].dtype == torch.float32
    assert out["top1_dc"].item() == pytest.approx(torch.cat([top1(z_s1, z_t2), top1(z_s2, z_t1)]).mean().item())
    assert out["top1_dp"].item() == pytest.approx(torch.cat([top1(z_s3, z_t2), top1(z_s3, z_t1)]).mean().item())
    assert 0.0 < out["top1_dc"].item() < 1.0  # (this seed) some rows win, some lose


def test_soco_returns_the_region_matching_top1():
    torch.manual_seed(0)
    m = SoCo(d3ssl_zoo.create_model("d3ssl_r18c4"), proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)
    batch = _batch()
    with torch.no_grad():
        p1 = m.predictor(m.student(batch["x1"], batch["boxes1"], 14))
        p2 = m.predictor(m.student(batch["x2"], batch["boxes2"], 14))
        z1, z2 = m.teacher(batch["x1"], batch["boxes1"], 14), m.teacher(batch["x2"], batch["boxes2"], 14)

    def top1(p, z):
        sim = F.normalize(p, dim=1) @ F.normalize(z, dim=1).t()
        return torch.tensor([float(sim[i, i] > max(sim[i, j] for j in range(len(sim)) if j != i))
                             for i in range(len(sim))])
    out = m(batch)
    assert set(out) == {"loss", "top1_match"}
    assert out["top1_match"].item() == pytest.approx(torch.cat([top1(p1, z2), top1(p2, z1)]).mean().item())


@pytest.mark.slow
def test_the_engine_logs_the_signal_beside_the_loss(make_tiny_source, tiny_overrides, tmp_path, monkeypatch, capsys):
    from d3ssl_zoo.engine import load_recipe, train

    logged = []
    real_log = Accelerator.log
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, **k: (
        logged.append((step, dict(values))), real_log(self, values, step=step, **k))[1])
    recipe = load_recipe(recipes_dir() / "demo.yaml",
                         tiny_overrides(*make_tiny_source(tmp_path / "src")) + ["train.checkpoint_every=100"])
    train(recipe, tmp_path / "run")
    assert [s for s, _ in logged] == [1, 2, 3, 4]
    for _, metrics in logged:
        assert {"loss", "l_dc", "l_dp", "top1_dc", "top1_dp"} <= set(metrics)
        assert 0.0 <= metrics["top1_dc"] <= 1.0 and 0.0 <= metrics["top1_dp"] <= 1.0
    assert "top1_dc=" in capsys.readouterr().err  # the progress bar shows it beside the loss
