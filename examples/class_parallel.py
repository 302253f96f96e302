"""Train a small classifier whose head is split by classes across 2 CPU processes (gloo),
and check that its loss curve equals the single-process one.

    python examples/class_parallel.py [--steps 20] [--world 2]

Each rank holds the rows (classes) [rank*K/W, (rank+1)*K/W) of the head's weight and
bias; the body is replicated. fused_anl.linear_anl_ce with process_group= returns
the full loss on every rank, the gradient of the rank's own head rows, and the
all-reduced gradient of the hidden features, so the replicated body stays in step
without any other synchronisation.
"""
import argparse
import datetime
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fused_anl  # noqa: E402

N, D_IN, D, K = 256, 32, 64, 40


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=g)
    t = (x[:, :4].sum(1) * 5).long().remainder(K)
    noisy = torch.rand(N, generator=g) < 0.4  # 40% symmetric label noise
    t[noisy] = torch.randint(0, K, (int(noisy.sum()),), generator=g)
    return x, t


def init():
    torch.manual_seed(1)
    body = torch.nn.Sequential(torch.nn.Linear(D_IN, D), torch.nn.ReLU())
    head = torch.nn.Linear(D, K)
    return body, head


def train(steps, rank=0, world=1, group=None):
    body, head = init()
    lo, hi = rank * K // world, (rank + 1) * K // world
    w = torch.nn.Parameter(head.weight.detach()[lo:hi].clone())
    b = torch.nn.Parameter(head.bias.detach()[lo:hi].clone())
    opt = torch.optim.SGD(list(body.parameters()) + [w, b], lr=2.0, momentum=0.9)
    x, t = data()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = fused_anl.linear_anl_ce(body(x), w, t, b, alpha=10.0, beta=1.0, backend="torch",
                                       process_group=group)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def worker(rank, world, store, steps, queue):
    # One intra-op thread: the ranks share the machine's cores, and these matrices are
    # far too small to gain from more.
    torch.set_num_threads(1)
    # The ranks meet through a file (no port to race for); any collective that waits
    # longer than the timeout raises instead of hanging.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    losses = train(steps, rank, world, dist.group.WORLD)
    if rank == 0:
        queue.put(losses)
    dist.barrier()  # no rank tears the group down while a peer still communicates
    dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="SGD steps")
    ap.add_argument("--world", type=int, default=2,
                    help="number of processes (ranks) the head's classes are split over")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # small MLP: one thread is fastest, and leaves a core to the ranks
    single = train(args.steps)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="class_parallel_") as d:
        mp.spawn(worker, args=(args.world, os.path.join(d, "store"), args.steps, queue),
                 nprocs=args.world, join=True)
    parallel = queue.get()
    print(f"{'step':>4} {'single process':>15} {args.world:>2} ranks (class-parallel)")
    for i, (a, b) in enumerate(zip(single, parallel)):
        print(f"{i:>4} {a:>15.6f} {b:>15.6f}")
    diff = max(abs(a - b) for a, b in zip(single, parallel))
    print(f"max |difference| over {args.steps} steps: {diff:.2e}")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
