"""LARS's step is a few ``torch._foreach_*`` calls per group, equal to the per-tensor loop it replaced."""
import copy
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import d3ssl_zoo
from d3ssl_zoo.method import D3SSL, LARS, lars_param_groups

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
bench_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_train)


def _method(seed=0):
    torch.manual_seed(seed)
    return D3SSL(d3ssl_zoo.create_model("d3ssl_r18c4"), proj_hidden_dim=32, proj_dim=16, tau=0.2,
                 queue_size=32, depositioning=True)


def _optimizer(m):
    return LARS(lars_param_groups(m, 1e-5), lr=0.5, momentum=0.9, eta=0.001)


def _set_grads(m, step):
    g = torch.Generator().manual_seed(step)
    for i, p in enumerate(m.parameters()):
        if p.requires_grad:
            # one tensor has no gradient on odd steps (skipped, its momentum left as it is)
            p.grad = None if (i == 5 and step % 2) else torch.randn(p.shape, generator=g) * 10.0 ** -(i % 4)


def test_foreach_step_equals_the_per_tensor_loop_over_several_steps():
    new = _method()
    with torch.no_grad():
        new.student.backbone.conv1.weight.zero_()  # ||w|| = 0: trust ratio 1
    ref = copy.deepcopy(new)
    opt_new, opt_ref = _optimizer(new), _optimizer(ref)
    assert len(opt_new.param_groups[0]["params"]) > 20 and len(opt_new.param_groups[1]["params"]) > 20
    for step in range(4):
        _set_grads(new, step)
        _set_grads(ref, step)
        if step == 2:  # a zero gradient: trust ratio 1
            new.student.backbone.layer1[0].conv1.weight.grad.zero_()
            ref.student.backbone.layer1[0].conv1.weight.grad.zero_()
        opt_new.step()
        bench_train.lars_step_per_tensor(opt_ref)
        for (name, a), b in zip(new.state_dict().items(), ref.state_dict().values()):
            assert torch.linalg.vector_norm(a.double() - b.double()) <= 1e-6 * torch.linalg.vector_norm(b.double()), \
                f"step {step}: {name}"
        for pa, pb in zip(new.parameters(), ref.parameters()):
            sa, sb = opt_new.state.get(pa, {}), opt_ref.state.get(pb, {})
            assert sa.keys() == sb.keys()
            if sa:
                a, b = sa["momentum_buffer"].double(), sb["momentum_buffer"].double()
                assert torch.linalg.vector_norm(a - b) <= 1e-6 * torch.linalg.vector_norm(b), f"step {step}: buffer"
    assert all(not torch.equal(a, b) for a, b in zip(new.parameters(), _method().parameters()) if a.requires_grad)


class _CountCalls(TorchFunctionMode):
    """Counts torch functions and tensor methods called, not attribute reads (``p.grad``)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += getattr(func, "__name__", "") != "__get__"
        return func(*args, **(kwargs or {}))


def _calls_per_step(copies):
    """torch calls of the second LARS step over ``copies`` copies of the method's parameters."""
    models = [_method() for _ in range(copies)]
    groups = [lars_param_groups(m, 1e-5) for m in models]
    opt = LARS([{**groups[0][i], "params": [p for g in groups for p in g[i]["params"]]} for i in range(2)],
               lr=0.5, momentum=0.9, eta=0.001)
    for m in models:
        _set_grads(m, 0)
    opt.step()  # the momentum buffers exist from here on
    with _CountCalls() as counter:
        opt.step()
    return counter.calls


def test_the_step_makes_no_torch_call_per_tensor():
    one, two = _calls_per_step(1), _calls_per_step(2)
    assert one == two, f"{one} torch calls per step for one copy of the parameters, {two} for two"


@pytest.mark.slow
def test_bench_train_times_lars_against_the_loop(capsys, one_thread):
    bench_train.main(["--image-size", "64", "--batch-size", "2", "--steps", "2"])
    out = capsys.readouterr().out
    assert re.search(r"^  optimizer \(LARS\)\s+[\d.]+ ms\s+[\d.]+%$", out, re.M), out
    n, foreach, loop, ratio = re.search(r"^LARS step over (\d+) tensors: foreach ([\d.]+) ms, per-tensor loop "
                                        r"([\d.]+) ms \(loop / foreach = ([\d.]+)\)$", out, re.M).groups()
    assert int(n) > 60 and float(foreach) > 0 and float(loop) > 0
    assert float(ratio) == pytest.approx(float(loop) / float(foreach), rel=0.05, abs=0.01)
