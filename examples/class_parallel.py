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
import os
import socket
import sys

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


def worker(rank, world, port, steps, queue):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    losses = train(steps, rank, world, dist.group.WORLD)
    if rank == 0:
        queue.put(losses)
    dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--world", type=int, default=2)
    args = ap.parse_args(argv)
    single = train(args.steps)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(worker, args=(args.world, port, args.steps, queue), nprocs=args.world, join=True)
    parallel = queue.get()
    print(f"{'step':>4} {'single process':>15} {args.world:>2} ranks (class-parallel)")
    for i, (a, b) in enumerate(zip(single, parallel)):
        print(f"{i:>4} {a:>15.6f} {b:>15.6f}")
    diff = max(abs(a - b) for a, b in zip(single, parallel))
    print(f"max |difference| over {args.steps} steps: {diff:.2e}")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
