"""Worker for test_batch_entropy.py: one process of a gloo group, checking the class-parallel
batch entropy term on class shards against the single-process term on the full logits
and against the published formula.

Also holds ``published_entropy``, the published ``ANL_CE_ER.entropy_reg`` written from its
definition (the oracle of test_batch_entropy.py). The group set-up follows
tests/dist_worker.py: a FileStore in a directory of the test's own (no port), one
intra-op thread per rank, every collective bounded by TIMEOUT, and a barrier before
the group is destroyed.
"""
import datetime
import faulthandler
import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

TIMEOUT = datetime.timedelta(seconds=120)  # a hang becomes an error, not a CI timeout


def published_entropy(z, target, p_min, ignore_index=-100):
    """``entropy_reg`` of the published ``ANL_CE_ER`` on the non-ignored rows of ``z``
    ``(N, K, ...)`` (every position of the trailing dims is a row), by autograd; an empty
    batch gives 0 (the documented choice)."""
    k = z.shape[1]
    rows = z.movedim(1, -1).reshape(-1, k)
    keep = target.reshape(-1) != ignore_index
    if not bool(keep.any()):
        # 0, with an exact zero gradient whatever the logits (NaN, -inf)
        return torch.where(torch.tensor(False), z.sum(), z.new_zeros(()))
    prob = F.softmax(rows[keep], dim=1).clamp(min=p_min, max=1 - p_min)
    prob_class = prob.sum(dim=0).view(-1) / prob.sum()
    prob_class = prob_class.clamp(min=p_min, max=1 - p_min)
    return math.log(k) + (prob_class * prob_class.log()).sum()


def _init(rank, world, store):
    os.environ.setdefault("TRITON_INTERPRET", "1")
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=TIMEOUT)


def _finish():
    dist.barrier()
    dist.destroy_process_group()


def make_batch(k, seed, n=11):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, k, (n,), generator=g)
    z[0, t[0]] += 30.0                  # confident row: p_y clamped at 1 - p_min
    z[1] *= 10.0                        # many p below p_min
    t[2] = -100                         # ignored row, with a NaN that must not leak
    z[2, 1] = float("nan")
    z[3, : k // 4] = float("-inf")      # padding inside the first shard only
    t[3] = k - 1
    z[:, k // 2] -= 40.0                # a class whose batch share is clamped at p_min
    t[t == k // 2] = 0
    return z, t


def _check(fn, rank, world, z, t, cuts, tag, **kw):
    """The sharded term and gradient against the full one and the published formula."""
    import fused_anl.batch_entropy as BE
    lo, hi = cuts[rank], cuts[rank + 1]
    full = z.clone().requires_grad_(True)
    ref_full = BE.batch_entropy(full, t, **kw)
    ref_full.backward(torch.tensor(1.5, dtype=ref_full.dtype))
    pub = z.clone().requires_grad_(True)
    ref = published_entropy(pub, t, kw.get("p_min", 1e-7))
    ref.backward(torch.tensor(1.5, dtype=ref.dtype))
    shard = z[:, lo:hi].clone().requires_grad_(True)
    out = fn(shard)
    out.backward(torch.tensor(1.5, dtype=out.dtype))
    msg = f"{tag} rank {rank}"
    torch.testing.assert_close(out, ref_full.detach(), rtol=1e-12, atol=1e-14, msg=msg)
    torch.testing.assert_close(shard.grad, full.grad[:, lo:hi], rtol=1e-10, atol=1e-14, msg=msg)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-14, msg=msg)
    torch.testing.assert_close(shard.grad, pub.grad[:, lo:hi], rtol=1e-10, atol=1e-14, msg=msg)


def run(rank, world, store):
    _init(rank, world, store)
    import fused_anl.batch_entropy as BE
    BE.CHUNK_ELEMENTS = 16  # several chunks per shard
    group = dist.group.WORLD
    k = 8 * world
    kl = k // world
    z, t = make_batch(k, seed=world)
    equal = [i * kl for i in range(world + 1)]

    # equal shards (class_start by rank), the default and a larger p_min
    for p_min in (1e-7, 1e-3):
        _check(lambda s: BE.batch_entropy(s, t, p_min=p_min, process_group=group),
               rank, world, z, t, equal, f"equal p_min={p_min}", p_min=p_min)
    # uneven shards with explicit class_start (rank 0 holds 3 classes)
    cuts = [0] + [3 + i * kl for i in range(world - 1)] + [k]
    _check(lambda s: BE.batch_entropy(s, t, process_group=group, class_start=cuts[rank]),
           rank, world, z, t, cuts, "uneven")
    # the caller's lse: no all_gather
    lse = torch.logsumexp(torch.where(torch.isnan(z), 0.0, z), 1)
    _check(lambda s: BE.batch_entropy(s, t, process_group=group, lse=lse),
           rank, world, z, t, equal, "lse")
    # every row ignored: E = 0, zero gradient
    t_none = torch.full_like(t, -100)
    _check(lambda s: BE.batch_entropy(s, t_none, process_group=group),
           rank, world, z, t_none, equal, "all ignored")

    # collectives: forward one all_gather (stats1) and two all_reduce (T and K; the two
    # sums), backward one all_reduce (R_n); with lse, no all_gather
    counts = {"all_gather": 0, "all_reduce": 0}
    originals = {name: getattr(dist, name) for name in counts}

    def counting(name):
        def wrapper(*a, **kw):
            counts[name] += 1
            return originals[name](*a, **kw)
        return wrapper

    for name in counts:
        setattr(dist, name, counting(name))
    try:
        shard = z[:, rank * kl:(rank + 1) * kl].clone().requires_grad_(True)
        e = BE.batch_entropy(shard, t, process_group=group)
        assert counts == {"all_gather": 1, "all_reduce": 2}, counts
        e.backward()
        assert counts == {"all_gather": 1, "all_reduce": 3}, counts
        counts.update(all_gather=0, all_reduce=0)
        BE.batch_entropy(shard, t, process_group=group, lse=lse)
        assert counts == {"all_gather": 0, "all_reduce": 2}, counts
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)

    # passes over the shard's rows: forward 2 (stats1, column sums), backward 2 (R_n, gradient)
    import fused_anl._torch_backend as TB
    seen = []
    chunks = TB._row_chunks

    def counting(z3, step_rows=None):
        for n0, n1, c in chunks(z3, step_rows):
            seen.append(n1 - n0)
            yield n0, n1, c

    TB._row_chunks = counting
    try:
        shard = z[:, rank * kl:(rank + 1) * kl].clone().requires_grad_(True)
        e = BE.batch_entropy(shard, t, process_group=group)
        assert sum(seen) == 2 * z.shape[0], seen
        seen.clear()
        e.backward()
        assert sum(seen) == 2 * z.shape[0], seen
    finally:
        TB._row_chunks = chunks

    # float32 logits: the same term within float32 rounding of the full computation
    z32 = z.float()
    full = z32.clone().requires_grad_(True)
    BE.batch_entropy(full, t).backward()
    shard = z32[:, rank * kl:(rank + 1) * kl].clone().requires_grad_(True)
    BE.batch_entropy(shard, t, process_group=group).backward()
    torch.testing.assert_close(shard.grad, full.grad[:, rank * kl:(rank + 1) * kl],
                               rtol=1e-4, atol=1e-6)
    _finish()


def run_dtensor(rank, world, store):
    """Logits as a DTensor sharded on the class dimension (uneven torch.chunk layout)."""
    _init(rank, world, store)
    import fused_anl.batch_entropy as BE
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (world,))
    k = 8 * world - 3
    z, t = make_batch(k, seed=world + 7)
    full = z.clone().requires_grad_(True)
    ref = published_entropy(full, t, 1e-7)
    ref.backward()
    dz = distribute_tensor(z, mesh, [Shard(1)]).requires_grad_(True)
    out = BE.batch_entropy(dz, t)
    assert tuple(out.placements) == (Replicate(),)
    out.backward()
    torch.testing.assert_close(out.to_local(), ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dz.grad.full_tensor(), full.grad, rtol=1e-10, atol=1e-14)
    _finish()
