"""Step-time breakdown of D3SSL pre-training.

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py                      # small CPU config (ResNet-18-C4, 96 px)
    python benchmarks/bench_train.py --arch d3ssl_r50c4 --image-size 224 --batch-size 64 --precision bf16  # on a GPU

Times one instrumented step, piece by piece, on the embedded sample dataset: data wait, each view's
forward (student f_q on x1, x2-s, x3; teacher f_k on x1, x2) and each student view's backward, the
losses, the queue update, the teacher EMA and the LARS step. It then times the same step without
instruments, as the engine's loop runs it (``method(batch)``, backward, LARS step, EMA), prints both,
and the share of the step spent outside backbone forward/backward (target <= 15%). Last it times
the LARS step alone side by side with the per-tensor Python loop it replaced, on the same parameters,
gradients and momentum state (``lars_step_per_tensor``, kept here as the reference). On CUDA it also
prints peak memory. The sample's 16 photos are repeated so that large batches can be timed.
"""
from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

import d3ssl_zoo
from d3ssl_zoo.data import build_pretrain_dataset, prepare_batch, pretrain_loader
from d3ssl_zoo.engine import EpochShuffleSampler, build_method, load_recipe
from d3ssl_zoo.method import LARS, lars_param_groups, nce
from d3ssl_zoo.tags import recipes_dir

RECIPES = recipes_dir()


class RepeatedEpochSampler(torch.utils.data.Sampler):
    """``sampler``'s ``(epoch, index)`` keys, ``repeats`` passes per epoch (sub-epochs ``epoch * repeats + r``)."""

    def __init__(self, sampler: EpochShuffleSampler, repeats: int) -> None:
        self.sampler, self.repeats, self.epoch = sampler, repeats, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.repeats * len(self.sampler)

    def __iter__(self):
        for r in range(self.repeats):
            self.sampler.set_epoch(self.epoch * self.repeats + r)
            yield from self.sampler


@torch.no_grad()
def lars_step_per_tensor(opt: LARS) -> None:
    """``opt.step()`` as a Python loop over the tensors: the update LARS shipped before its
    ``torch._foreach_*`` form, the reference for its timing here and for its test."""
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            d_p = p.grad
            if group["weight_decay"]:
                d_p = d_p.add(p, alpha=group["weight_decay"])
            if group["lars_adapt"]:
                w_norm, g_norm = torch.norm(p), torch.norm(d_p)
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                    torch.ones_like(w_norm))
                d_p = d_p.mul(trust)
            state = opt.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.clone(d_p).detach()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
            p.add_(state["momentum_buffer"], alpha=-group["lr"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="d3ssl_r18c4")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed steps per mode (after one warm-up step)")
    p.add_argument("--channels-last", action="store_true", help="weights and images in channels-last memory format")
    p.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no")
    p.add_argument("--num-workers", type=int, help="data loader workers (default: 0 on CPU, 8 on CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    recipe = load_recipe(RECIPES / "demo.yaml", [
        f"model.name={args.arch}", f"data.image_size={args.image_size}", f"data.small_size={args.image_size // 2}",
        f"train.batch_size={args.batch_size}"] + ([] if args.arch.endswith("r18c4") else [
            "method.proj_hidden_dim=4096", "method.pred_hidden_dim=4096", "method.queue_size=65536"]))
    dataset = build_pretrain_dataset(recipe.data, "sample", None, seed=0)
    # the sample has 16 photos: each epoch visits them several times, so that large batches (64 on a
    # GPU) can be timed; keys are (epoch, index), as the engine's sampler yields them
    repeats = math.ceil(2 * args.batch_size / len(dataset))
    sampler = RepeatedEpochSampler(EpochShuffleSampler(len(dataset), 0), repeats)
    num_workers = args.num_workers if args.num_workers is not None else (8 if device.type == "cuda" else 0)
    loader = pretrain_loader(dataset, recipe.data, args.batch_size, sampler, num_workers,
                             pin_memory=device.type == "cuda")

    def batches():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    torch.manual_seed(0)
    method = build_method(recipe, d3ssl_zoo.create_model(args.arch)).to(device).train()
    if args.channels_last:  # images follow the first convolution's weights
        method = method.to(memory_format=torch.channels_last)
    opt = LARS(lars_param_groups(method, 1e-5), lr=0.1, momentum=0.9)
    dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(name):
        sync()
        t = time.perf_counter()
        yield
        sync()
        times[name] += time.perf_counter() - t

    it = batches()

    def instrumented_step():
        with timed("data wait"):
            batch = next(it)
        with timed("host->device"):
            batch = prepare_batch({k: v.to(device, non_blocking=True) for k, v in batch.items()},
                                  recipe.data.mean, recipe.data.std)
        s, t, r, rs = method.student, method.teacher, method.roi_size, method.roi_size_small
        with autocast():
            with timed("fwd f_q x1"):
                z_s1 = s(batch["x1"], batch["boxes1"], r)
            with timed("fwd f_q x2s"):
                z_s2 = s(batch["x2s"], batch["boxes2s"], rs)
            with timed("fwd f_q x3"):
                z_s3 = s(batch["x3"], batch["boxes3"], r)
            with torch.no_grad():
                with timed("fwd f_k x1"):
                    z_t1 = t(batch["x1"], batch["boxes1"], r)
                with timed("fwd f_k x2"):
                    z_t2 = t(batch["x2"], batch["boxes2"], r)
        with timed("losses (Eq. 4, 5, 9, 10)"):
            zs = [z.detach().requires_grad_() for z in (z_s1, z_s2, z_s3)]
            neg = method.queue.keys.clone()
            # x3 holds the first n <= K proposals of each image (data.dp_proposals), as D3SSL.forward pairs them
            n, k = batch["boxes3"].shape[1], batch["boxes1"].shape[1]
            z_t1_dp, z_t2_dp = (z.view(-1, k, z.shape[1])[:, :n].reshape(-1, z.shape[1]) for z in (z_t1, z_t2))
            loss = (nce(zs[0], z_t2, neg, method.tau).mean() + nce(zs[1], z_t1, neg, method.tau).mean()
                    + nce(zs[2], z_t2_dp, neg, method.tau).mean() + nce(zs[2], z_t1_dp, neg, method.tau).mean())
            grads = torch.autograd.grad(loss, zs)
        for name, z, g in zip(("x1", "x2s", "x3"), (z_s1, z_s2, z_s3), grads):
            with timed(f"bwd f_q {name}"):
                z.backward(g)
        with timed("queue enqueue"):
            method.queue.enqueue(torch.cat([z_t1, z_t2]))
        with timed("optimizer (LARS)"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        with timed("teacher EMA"):
            method.momentum_update(0.99)

    def plain_step():
        with timed("plain: data wait"):
            batch = next(it)
        with timed("plain: step"):
            batch = prepare_batch({k: v.to(device, non_blocking=True) for k, v in batch.items()},
                                  recipe.data.mean, recipe.data.std)
            with autocast():
                out = method(batch)
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            method.momentum_update(0.99)

    for step in (instrumented_step, plain_step):
        step()  # warm-up
    times.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.steps):
        instrumented_step()
    for _ in range(args.steps):
        plain_step()

    # the LARS step alone, foreach vs the per-tensor loop, alternating on the same parameters (one more
    # backward gives them gradients; the momentum buffers are those of the steps above)
    out = method(prepare_batch({k: v.to(device) for k, v in next(it).items()}, recipe.data.mean, recipe.data.std))
    out["loss"].backward()
    lars_times = {"foreach": 0.0, "loop": 0.0}
    runs = (("foreach", opt.step), ("loop", lambda: lars_step_per_tensor(opt)))
    for i in range(args.steps):
        for name, fn in runs[::1 if i % 2 else -1]:  # alternating which goes first
            sync()
            t = time.perf_counter()
            fn()
            sync()
            lars_times[name] += time.perf_counter() - t
    opt.zero_grad(set_to_none=True)

    n = args.steps
    parts = {k: v / n for k, v in times.items() if not k.startswith("plain")}
    total = sum(parts.values())
    backbone = sum(v for k, v in parts.items() if k.startswith(("fwd", "bwd")))
    print(f"D3SSL step breakdown: {args.arch}, {args.image_size} px, batch {args.batch_size}, K="
          f"{recipe.data.num_proposals}, precision {args.precision}, "
          f"{'channels-last' if args.channels_last else 'contiguous'}, {device}, {torch.get_num_threads()} thread(s), "
          f"{num_workers} data worker(s), "
          f"mean of {n} steps")
    for k, v in parts.items():
        print(f"  {k:<28} {1000 * v:9.1f} ms  {100 * v / total:5.1f}%")
    print(f"  {'instrumented step':<28} {1000 * total:9.1f} ms")
    engine = (times["plain: data wait"] + times["plain: step"]) / n
    print(f"  {'method step, uninstrumented':<28} {1000 * engine:9.1f} ms  (instrumented / uninstrumented = "
          f"{total / engine:.2f})")
    outside = 1.0 - backbone / total
    print(f"share of the step outside backbone forward/backward: {100 * outside:.1f}% (target <= 15%)")
    n_tensors = sum(len(g["params"]) for g in opt.param_groups)
    print(f"LARS step over {n_tensors} tensors: foreach {1000 * lars_times['foreach'] / n:.2f} ms, per-tensor loop "
          f"{1000 * lars_times['loop'] / n:.2f} ms (loop / foreach = {lars_times['loop'] / lars_times['foreach']:.2f})")
    print(f"images/s (uninstrumented step): {args.batch_size / engine:.1f}")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
