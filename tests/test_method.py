"""Tests of d3ssl_zoo.method: losses (Eq. 5, BYOL), memory bank, schedules, LARS, teacher, D3SSL and SoCo."""
import math

import pytest
import torch
import torch.nn.functional as F

import d3ssl_zoo
from d3ssl_zoo.method import (
    D3SSL,
    LARS,
    RegionQueue,
    SoCo,
    byol_loss,
    lars_param_groups,
    lr_at,
    make_teacher,
    momentum_at,
    momentum_update,
    nce,
    nce_logits,
    scaled_lr,
)

B, K, S = 2, 3, 64


def _boxes(g, size, b=B, k=K):
    xy = torch.rand(b, k, 2, generator=g) * size / 2
    wh = torch.rand(b, k, 2, generator=g) * size / 2 + 8
    return torch.cat([xy, xy + wh], dim=-1)


def synthetic_batch(seed=0, b=B, k=K, size=S, depositioning=True):
    """A batch with the keys of the data contract (d3ssl views), random content."""
    g = torch.Generator().manual_seed(seed)
    b2 = _boxes(g, size, b, k)
    batch = {"x1": torch.randn(b, 3, size, size, generator=g), "x2": torch.randn(b, 3, size, size, generator=g),
             "x2s": torch.randn(b, 3, size // 2, size // 2, generator=g), "boxes1": _boxes(g, size, b, k),
             "boxes2": b2, "boxes2s": b2 / 2, "image_id": torch.arange(b)}
    if depositioning:
        batch["x3"] = torch.randn(b, 3, size, size, generator=g)
        batch["boxes3"] = _boxes(g, size, b, k)
    return batch


def tiny_d3ssl(depositioning=True, queue_size=32, **kwargs):
    torch.manual_seed(0)
    return D3SSL(d3ssl_zoo.create_model("d3ssl_r18c4"), proj_hidden_dim=32, proj_dim=16, tau=0.2,
                 queue_size=queue_size, depositioning=depositioning, **kwargs)


# --- Eq. 5 and BYOL ---------------------------------------------------------------------------------------

def test_nce_matches_eq5():
    g = torch.Generator().manual_seed(1)
    z, zp, neg = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(7, 8, generator=g)
    tau = 0.2
    got = nce(z, zp, neg, tau)
    zn, zpn, negn = F.normalize(z, dim=1), F.normalize(zp, dim=1), F.normalize(neg, dim=1)
    for i in range(5):
        pos = torch.exp(zn[i] @ zpn[i] / tau)
        den = pos + torch.exp(negn @ zn[i] / tau).sum()
        assert got[i].item() == pytest.approx(-math.log(pos / den), rel=1e-5)


def test_nce_small_when_positive_matches_and_negatives_orthogonal():
    z = torch.eye(4)[:2]
    neg = torch.eye(4)[2:]
    assert nce(z, z, neg, 0.05).max() < 1e-6
    assert torch.allclose(nce(z, z.flip(0), neg, 0.05), torch.full((2,), math.log(3)))  # all logits equal
    assert nce(z, z.flip(0), z, 0.05).min() > 5  # a negative is closer than the positive: large loss


def test_byol_loss_range():
    p = torch.randn(4, 8)
    assert torch.allclose(byol_loss(p, 3 * p), torch.zeros(4), atol=1e-6)
    assert torch.allclose(byol_loss(p, -p), torch.full((4,), 4.0), atol=1e-6)


def _bf16_embeddings(seed=3, n=64, m=512, d=128):
    # student / teacher pairs with cosine ~0.9 and a float32 queue of unit keys, as in training
    g = torch.Generator().manual_seed(seed)
    z_pos = torch.randn(n, d, generator=g)
    z = (z_pos + 0.5 * torch.randn(n, d, generator=g)).bfloat16()
    return z, z_pos.bfloat16(), F.normalize(torch.randn(m, d, generator=g), dim=1)


def test_nce_logits_and_loss_are_float32_under_bf16_autocast():
    z, z_pos, neg = _bf16_embeddings()
    ref_logits = nce_logits(z.float(), z_pos.float(), neg, 0.2)  # fp32 reference from the same bf16 values
    ref = nce(z.float(), z_pos.float(), neg, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = nce_logits(z, z_pos, neg, 0.2)
        loss = nce(z, z_pos, neg, 0.2)
        bf16_sims = F.normalize(z.float(), dim=1) @ neg.t()  # what autocast does to a bare matmul
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.allclose(logits, ref_logits, rtol=0, atol=1e-6)
    assert torch.allclose(loss, ref, rtol=0, atol=1e-6)
    # the defect the float32 block avoids: a bf16 matmul errs by far more than the tolerance above
    assert bf16_sims.dtype == torch.bfloat16
    assert (bf16_sims.float() / 0.2 - ref_logits[:, 1:]).abs().max() > 1e-3


def test_byol_loss_float32_under_bf16_autocast():
    z, z_pos, _ = _bf16_embeddings()
    ref = byol_loss(z.float(), z_pos.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = byol_loss(z, z_pos)
    assert loss.dtype == torch.float32 and torch.allclose(loss, ref, rtol=0, atol=1e-6)


# --- memory bank ---------------------------------------------------------------------------------------------

def test_queue_fifo_wraps_and_counts():
    q = RegionQueue(size=5, dim=3, seed=0)
    assert q.fill() == 0 and torch.allclose(q.keys.norm(dim=1), torch.ones(5))
    k1 = F.normalize(torch.randn(3, 3), dim=1)
    q.enqueue(k1)
    assert int(q.ptr) == 3 and q.fill() == pytest.approx(0.6)
    assert torch.allclose(q.keys[:3], k1)
    k2 = F.normalize(torch.randn(4, 3), dim=1)
    q.enqueue(k2)  # rows 3, 4, 0, 1
    assert int(q.ptr) == 2 and q.fill() == 1.0 and int(q.num_enqueued) == 7
    assert torch.allclose(q.keys[[3, 4, 0, 1]], k2) and torch.allclose(q.keys[2], k1[2])


def test_queue_keeps_newest_when_batch_exceeds_size_and_normalises():
    q = RegionQueue(size=4, dim=2, seed=0)
    keys = torch.randn(6, 2) * 5
    q.enqueue(keys)
    assert torch.allclose(q.keys.norm(dim=1), torch.ones(4))
    assert set(map(tuple, q.keys.round(decimals=5).tolist())) == set(
        map(tuple, F.normalize(keys[2:], dim=1).round(decimals=5).tolist()))


def test_queue_state_round_trip_and_seeded_init():
    q = RegionQueue(8, 4, seed=3)
    q.enqueue(torch.randn(5, 4))
    r = RegionQueue(8, 4, seed=99)
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.keys, q.keys) and int(r.ptr) == 5 and r.fill() == q.fill()
    assert torch.equal(RegionQueue(8, 4, seed=3).keys, RegionQueue(8, 4, seed=3).keys)


# --- schedules and LARS ------------------------------------------------------------------------------------------

def test_lr_schedule_warmup_then_cosine():
    peak = scaled_lr(1.0, 512, 256)
    assert peak == 2.0
    lrs = [lr_at(s, 100, 10, peak) for s in range(100)]
    assert lrs[0] == pytest.approx(0.2) and lrs[9] == pytest.approx(2.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(55, 100, 10, peak) == pytest.approx(1.0)  # half-way through the cosine
    assert lr_at(100, 100, 10, peak) == pytest.approx(0.0)


def test_momentum_schedule_cosine_099_to_1():
    assert momentum_at(0, 1000) == pytest.approx(0.99)
    assert momentum_at(500, 1000) == pytest.approx(0.995)
    assert momentum_at(1000, 1000) == pytest.approx(1.0)
    ms = [momentum_at(s, 1000) for s in range(0, 1001, 50)]
    assert all(a <= b for a, b in zip(ms, ms[1:]))


def test_lars_groups_exclude_bias_and_bn_and_teacher():
    m = tiny_d3ssl()
    decay, no_decay = lars_param_groups(m, 1e-5)
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    assert not no_decay["lars_adapt"] and decay["lars_adapt"]
    ids = {id(p) for p in decay["params"]} | {id(p) for p in no_decay["params"]}
    assert ids == {id(p) for p in m.parameters() if p.requires_grad}
    assert not any(id(p) in ids for p in m.teacher.parameters())
    bn = m.student.backbone.bn1
    assert any(p is bn.weight for p in no_decay["params"]) and any(p is bn.bias for p in no_decay["params"])
    assert all(p.ndim > 1 for p in decay["params"])


def test_lars_step_matches_formula():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([0.5])
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars_adapt": True},
                {"params": [b], "weight_decay": 0.0, "lars_adapt": False}], lr=2.0, momentum=0.9, eta=0.001)
    opt.step()
    d = torch.tensor([[0.3, 1.4]])  # grad + wd * w
    trust = 0.001 * 5.0 / d.norm()
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 2.0 * trust * d)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 2.0 * 0.5]))  # plain SGD, no decay
    opt.step()  # momentum: buffer = 0.9 * buf + new
    assert torch.allclose(b.detach(), torch.tensor([0.0 - 2.0 * (0.9 * 0.5 + 0.5)]))


# --- teacher ----------------------------------------------------------------------------------------------------

def test_teacher_momentum_update():
    s = torch.nn.Linear(3, 2)
    t = make_teacher(s)
    assert all(not p.requires_grad for p in t.parameters())
    assert all(torch.equal(a, b) for a, b in zip(s.parameters(), t.parameters()))
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
    before = [p.clone() for p in t.parameters()]
    momentum_update(t, s, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, t.parameters()))
    momentum_update(t, s, 0.75)
    for old, new, sp in zip(before, t.parameters(), s.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * sp)


# --- D3SSL (Eq. 3-10) and SoCo -------------------------------------------------------------------------------------

def test_d3ssl_forward_equations():
    m = tiny_d3ssl()
    batch = synthetic_batch()
    negatives = m.queue.keys.clone()
    with torch.no_grad():  # the same Eq. 3 embeddings, computed by hand (train-mode BN, same batches)
        z_s1, z_s2 = m.student(batch["x1"], batch["boxes1"], 14), m.student(batch["x2s"], batch["boxes2s"], 7)
        z_t1, z_t2 = m.teacher(batch["x1"], batch["boxes1"], 14), m.teacher(batch["x2"], batch["boxes2"], 14)
        z_s3 = m.student(batch["x3"], batch["boxes3"], 14)
    l_dc = nce(z_s1, z_t2, negatives, 0.2) + nce(z_s2, z_t1, negatives, 0.2)
    l_dp = nce(z_s3, z_t2, negatives, 0.2) + nce(z_s3, z_t1, negatives, 0.2)
    out = m(batch)
    assert set(out) == {"loss", "l_dc", "l_dp", "top1_dc", "top1_dp"}
    assert out["l_dc"].item() == pytest.approx(l_dc.mean().item(), rel=1e-4)
    assert out["l_dp"].item() == pytest.approx(l_dp.mean().item(), rel=1e-4)
    assert out["loss"].item() == pytest.approx((l_dc + l_dp).mean().item(), rel=1e-4)  # Eq. 10
    # both teacher views are enqueued after the loss
    assert int(m.queue.ptr) == 2 * B * K
    assert torch.allclose(m.queue.keys[:2 * B * K], F.normalize(torch.cat([z_t1, z_t2]), dim=1), atol=1e-5)


def test_d3ssl_dp_on_the_first_proposals_only():
    # data.dp_proposals = 1: x3 holds the first of the K proposals; L_dp pairs it with that box's teacher views
    m = tiny_d3ssl()
    batch = synthetic_batch()
    batch["boxes3"] = batch["boxes3"][:, :1]
    negatives = m.queue.keys.clone()
    with torch.no_grad():
        z_s1, z_s2 = m.student(batch["x1"], batch["boxes1"], 14), m.student(batch["x2s"], batch["boxes2s"], 7)
        z_t1, z_t2 = m.teacher(batch["x1"], batch["boxes1"], 14), m.teacher(batch["x2"], batch["boxes2"], 14)
        z_s3 = m.student(batch["x3"], batch["boxes3"], 14)
    first = torch.arange(B) * K  # row of each image's first box
    l_dc = (nce(z_s1, z_t2, negatives, 0.2) + nce(z_s2, z_t1, negatives, 0.2)).view(B, K)
    l_dp = nce(z_s3, z_t2[first], negatives, 0.2) + nce(z_s3, z_t1[first], negatives, 0.2)
    out = m(batch)
    assert out["l_dp"].item() == pytest.approx(l_dp.mean().item(), rel=1e-4)
    per_region = l_dc.clone()
    per_region[:, 0] += l_dp
    assert out["loss"].item() == pytest.approx(per_region.mean().item(), rel=1e-4)  # Eq. 10, mean over K
    out["loss"].backward()
    assert m.student.backbone.conv1.weight.grad.abs().sum() > 0


def test_d3ssl_shuffling_bn_normalises_query_and_key_over_different_images():
    # MoCo's shuffling BN (method.bn_groups): BN statistics per group of images, contiguous groups
    # for the student, a seeded random permutation for the teacher; rows come back in input order
    b, groups = 6, 3
    m = D3SSL(d3ssl_zoo.create_model("d3ssl_r18c4"), proj_hidden_dim=32, proj_dim=16, tau=0.2, queue_size=64,
              depositioning=True, queue_seed=5, bn_groups=groups)
    batch = synthetic_batch(b=b)
    g = torch.Generator().manual_seed(5 * 1_000_003)  # the first call's shuffle: seed, call 0
    perm = torch.randperm(b, generator=g)
    assert not torch.equal(perm, torch.arange(b))
    negatives = m.queue.keys.clone()

    def grouped(enc, x, boxes, roi, order):
        out = torch.empty(b, K, 16)
        for idx in order.tensor_split(groups):
            out[idx] = enc(x[idx], boxes[idx], roi).view(len(idx), K, 16)
        return out.view(b * K, 16)

    with torch.no_grad():
        ident = torch.arange(b)
        z_s1 = grouped(m.student, batch["x1"], batch["boxes1"], 14, ident)
        z_s2 = grouped(m.student, batch["x2s"], batch["boxes2s"], 7, ident)
        z_s3 = grouped(m.student, batch["x3"], batch["boxes3"], 14, ident)
        z_t1 = grouped(m.teacher, batch["x1"], batch["boxes1"], 14, perm)
        z_t2 = grouped(m.teacher, batch["x2"], batch["boxes2"], 14, perm)
        one_batch = m.teacher(batch["x2"], batch["boxes2"], 14)
    assert (z_t2 - one_batch).abs().max() > 1e-3  # the key depends on which images share its BN batch
    l_dc = nce(z_s1, z_t2, negatives, 0.2) + nce(z_s2, z_t1, negatives, 0.2)
    l_dp = nce(z_s3, z_t2, negatives, 0.2) + nce(z_s3, z_t1, negatives, 0.2)
    out = m(batch)
    assert out["l_dc"].item() == pytest.approx(l_dc.mean().item(), rel=1e-4)
    assert out["l_dp"].item() == pytest.approx(l_dp.mean().item(), rel=1e-4)
    assert torch.allclose(m.queue.keys[:2 * b * K], F.normalize(torch.cat([z_t1, z_t2]), dim=1), atol=1e-5)
    # the shuffle counter is state (checkpointed with the model): the next call draws the next permutation
    assert int(m.state_dict()["bn_shuffle_calls"]) == 1
    assert "bn_shuffle_calls" not in tiny_d3ssl().state_dict()  # one BN batch: checkpoints keep their old keys
    _, second = m._bn_orders(b)
    assert torch.equal(second, torch.randperm(b, generator=torch.Generator().manual_seed(5 * 1_000_003 + 1)))
    with pytest.raises(ValueError, match="cannot be split into method.bn_groups=3"):
        m(synthetic_batch(b=2))
    with pytest.raises(ValueError, match="bn_groups must be >= 1"):
        D3SSL(d3ssl_zoo.create_model("d3ssl_r18c4"), proj_hidden_dim=32, proj_dim=16, tau=0.2, queue_size=8,
              depositioning=False, bn_groups=0)


def test_d3ssl_gradients_reach_student_only_and_dp_switch():
    m = tiny_d3ssl(depositioning=False)
    batch = synthetic_batch(depositioning=False)  # no x3 / boxes3 needed without L_dp
    out = m(batch)
    assert set(out) == {"loss", "l_dc", "top1_dc"} and out["loss"].item() == pytest.approx(out["l_dc"].item())
    out["loss"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.student.backbone.layer4[0].bn2.weight.grad.abs().sum() > 0  # res5 head (Eq. 1)
    assert m.student.backbone.conv1.weight.grad.abs().sum() > 0


# small RoIs in the bf16 tests: a CPU without native bf16 (AVX2) runs bf16 convolutions through aten's
# slow kernel, and res5 on 14 x 14 RoIs made each of these tests take 20-40 s
def test_d3ssl_loss_under_bf16_autocast_is_the_fp32_loss_of_its_bf16_embeddings():
    m = tiny_d3ssl(roi_size=4, roi_size_small=2)
    batch = synthetic_batch()
    negatives = m.queue.keys.clone()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        r, rs = m.roi_size, m.roi_size_small
        z_s1, z_s2 = m.student(batch["x1"], batch["boxes1"], r), m.student(batch["x2s"], batch["boxes2s"], rs)
        z_t1, z_t2 = m.teacher(batch["x1"], batch["boxes1"], r), m.teacher(batch["x2"], batch["boxes2"], r)
        z_s3 = m.student(batch["x3"], batch["boxes3"], r)
    assert z_s1.dtype == torch.bfloat16  # the network itself runs in bf16
    z = [t.float() for t in (z_s1, z_s2, z_t1, z_t2, z_s3)]
    l_dc = nce(z[0], z[3], negatives, 0.2) + nce(z[1], z[2], negatives, 0.2)
    l_dp = nce(z[4], z[3], negatives, 0.2) + nce(z[4], z[2], negatives, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(batch)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert out["l_dc"].item() == pytest.approx(l_dc.mean().item(), abs=1e-5)
    assert out["loss"].item() == pytest.approx((l_dc + l_dp).mean().item(), abs=1e-5)


def test_soco_symmetric_byol_loss():
    torch.manual_seed(0)
    m = SoCo(d3ssl_zoo.create_model("d3ssl_r18c4"), proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)
    batch = synthetic_batch(depositioning=False)
    with torch.no_grad():
        p1 = m.predictor(m.student(batch["x1"], batch["boxes1"], 14))
        p2 = m.predictor(m.student(batch["x2"], batch["boxes2"], 14))
        z1, z2 = m.teacher(batch["x1"], batch["boxes1"], 14), m.teacher(batch["x2"], batch["boxes2"], 14)
    out = m(batch)
    expected = (byol_loss(p1, z2) + byol_loss(p2, z1)).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert 0.0 <= out["loss"].item() <= 8.0
    out["loss"].backward()
    assert m.predictor[0].weight.grad is not None and all(p.grad is None for p in m.teacher.parameters())


def test_soco_loss_under_bf16_autocast_is_the_fp32_loss_of_its_bf16_embeddings():
    torch.manual_seed(0)
    m = SoCo(d3ssl_zoo.create_model("d3ssl_r18c4"), proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32, roi_size=4)
    batch = synthetic_batch(depositioning=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        r = m.roi_size
        p1 = m.predictor(m.student(batch["x1"], batch["boxes1"], r))
        p2 = m.predictor(m.student(batch["x2"], batch["boxes2"], r))
        z1, z2 = m.teacher(batch["x1"], batch["boxes1"], r), m.teacher(batch["x2"], batch["boxes2"], r)
    assert p1.dtype == torch.bfloat16
    expected = (byol_loss(p1.float(), z2.float()) + byol_loss(p2.float(), z1.float())).mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(batch)
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_batched_rois_equal_the_validated_conversion():
    from d3ssl_zoo.boxes import batched_rois, boxes_to_rois

    boxes = torch.tensor([[[0, 0, 10, 12], [4, 5, 30, 31]], [[1, 2, 3, 4], [0, 0, 63, 63]]], dtype=torch.float32)
    rois = batched_rois(boxes)
    assert torch.equal(rois, boxes_to_rois(list(boxes), 2))
    assert rois[:, 0].tolist() == [0, 0, 1, 1] and rois.dtype == torch.float32
