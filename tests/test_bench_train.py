"""benchmarks/bench_train.py runs on the embedded sample and prints a breakdown that adds up."""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
bench_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_train)


def test_repeated_epoch_sampler_visits_every_index_repeats_times_per_epoch():
    sampler = bench_train.RepeatedEpochSampler(bench_train.EpochShuffleSampler(5, seed=0), 3)
    sampler.set_epoch(2)
    keys = list(sampler)
    assert len(keys) == len(sampler) == 15
    assert sorted(i for _, i in keys) == sorted(list(range(5)) * 3)
    assert [e for e, _ in keys] == [6] * 5 + [7] * 5 + [8] * 5  # distinct sub-epochs: distinct random views


@pytest.mark.slow
def test_step_breakdown_on_the_sample(capsys, one_thread):
    bench_train.main(["--image-size", "64", "--batch-size", "9", "--steps", "1"])
    out = capsys.readouterr().out
    # 2 x 9 > the sample's 16 photos: the sampler repeats them
    assert "d3ssl_r18c4, 64 px, batch 9, K=4, precision no, contiguous, cpu" in out
    parts = dict(re.findall(r"^  (\S.*?)\s+[\d.]+ ms\s+([\d.]+)%$", out, re.M))
    for name in ("data wait", "fwd f_q x1", "fwd f_q x2s", "fwd f_q x3", "fwd f_k x1", "fwd f_k x2",
                 "bwd f_q x1", "bwd f_q x2s", "bwd f_q x3", "optimizer (LARS)", "teacher EMA"):
        assert name in parts, f"{name} missing from:\n{out}"
    assert abs(sum(map(float, parts.values())) - 100) < 0.5
    share = float(re.search(r"outside backbone forward/backward: ([\d.]+)%", out).group(1))
    assert 0 < share < 100
