"""Worker for test_distributed.py: one process of a gloo group, checking every loss on
class shards against the single-process loss on the full logits.

Every worker joins its group through a FileStore in a directory the test creates for
it alone (no port to pick and release, so nothing can take it in between), uses one
intra-op thread (the ranks share the machine's cores), bounds every collective with
TIMEOUT, and leaves through _finish: a barrier, so that no rank tears its group
down while a peer is still communicating, then destroy_process_group. A worker that
fails raises before _finish; torch.multiprocessing reports its traceback and stops
the other ranks.
"""
import datetime
import faulthandler
import os

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(seconds=120)  # a hang becomes an error, not a CI timeout


def _init(rank, world, store):
    """Join the gloo group of `world` ranks through the FileStore at path `store`."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    faulthandler.enable(all_threads=True)  # a crash (SIGABRT, SIGSEGV) shows where it was
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=TIMEOUT)


def _finish():
    """Leave the group only once every rank has finished its collectives."""
    dist.barrier()
    dist.destroy_process_group()


def make_batch(k, seed):
    g = torch.Generator().manual_seed(seed)
    n = 9
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, k, (n,), generator=g)
    z[0, t[0]] += 30.0                  # confident row
    z[1] *= 10.0                        # many p below p_min
    t[2] = -100                         # ignored row
    z[3, : k // 4] = float("-inf")      # padding inside the first shard only
    t[3] = k - 1
    return z, t


def run(rank, world, store, names, backends, boundary_labels):
    _init(rank, world, store)
    import fused_anl
    k = 8 * world
    kl = k // world
    z, t = make_batch(k, seed=world)
    if boundary_labels:  # labels on each shard's first and last class
        t[4], t[5], t[6], t[7] = 0, kl - 1, kl, k - 1
    weight = torch.rand(k, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    for name in names:
        for backend in backends:
            for reduction, w in (("mean", weight), ("sum", None), ("none", None)):
                full = z.clone().requires_grad_(True)
                ref = getattr(fused_anl, name)(full, t, reduction=reduction, weight=w,
                                               backend="torch")
                go = torch.linspace(0.5, 1.5, ref.numel(), dtype=ref.dtype).reshape(ref.shape)
                ref.backward(go)
                shard = z[:, rank * kl:(rank + 1) * kl].clone().requires_grad_(True)
                out = getattr(fused_anl, name)(shard, t, reduction=reduction, weight=w,
                                               backend=backend, process_group=dist.group.WORLD)
                out.backward(go)
                tag = f"{name}/{backend}/{reduction} rank {rank}"
                torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12, msg=tag)
                torch.testing.assert_close(shard.grad, full.grad[:, rank * kl:(rank + 1) * kl],
                                           rtol=1e-10, atol=1e-12, msg=tag)
    # collectives per forward: one all_gather, plus one all_reduce for lse-dependent sums
    from fused_anl.kernels import _codes as C
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
        for name in names:
            spec = fused_anl.LOSSES[name]
            counts.update(all_gather=0, all_reduce=0)
            shard = z[:, rank * kl:(rank + 1) * kl].clone().requires_grad_(True)
            getattr(fused_anl, name)(shard, t, backend=backends[0],
                                     process_group=dist.group.WORLD).backward()
            expected = {"all_gather": 1,
                        "all_reduce": int(C.needs_stats2(spec.active, spec.passive))}
            assert counts == expected, (name, counts, expected)
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    # explicit class_start with unequal shards (rank 0 gets 3 classes)
    cuts = [0] + [3 + i * kl for i in range(world - 1)] + [k]
    lo, hi = cuts[rank], cuts[rank + 1]
    full = z.clone().requires_grad_(True)
    ref = fused_anl.anl_ce(full, t, backend="torch")
    ref.backward()
    shard = z[:, lo:hi].clone().requires_grad_(True)
    out = fused_anl.ANLCELoss(process_group=dist.group.WORLD, class_start=lo,
                              backend=backends[0])(shard, t)
    out.backward()
    torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(shard.grad, full.grad[:, lo:hi], rtol=1e-10, atol=1e-12)
    _finish()


def run_linear(rank, world, store, backend):
    """Fused linear + loss with the weight sharded by rows (classes), hidden replicated."""
    _init(rank, world, store)
    import fused_anl
    g = torch.Generator().manual_seed(0)
    n, d, k = 7, 5, 6 * world
    kl = k // world
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64)
    t = torch.randint(0, k, (n,), generator=g)
    t[2] = -100
    for reduction in ("mean", "none"):
        rs = [x.clone().requires_grad_(True) for x in (h, w, b)]
        ref = fused_anl.reference.anl_fl(torch.addmm(rs[2], rs[0], rs[1].t()), t,
                                         reduction=reduction)
        go = torch.linspace(0.5, 1.5, ref.numel(), dtype=ref.dtype).reshape(ref.shape)
        ref.backward(go)
        sl = slice(rank * kl, (rank + 1) * kl)
        ps = [h.clone().requires_grad_(True), w[sl].clone().requires_grad_(True),
              b[sl].clone().requires_grad_(True)]
        out = fused_anl.linear_loss("anl_fl", ps[0], ps[1], t, ps[2], reduction=reduction,
                                    chunk_size=3, backend=backend,
                                    process_group=dist.group.WORLD)
        out.backward(go)
        torch.testing.assert_close(out, ref.detach())
        torch.testing.assert_close(ps[0].grad, rs[0].grad)
        torch.testing.assert_close(ps[1].grad, rs[1].grad[sl])
        torch.testing.assert_close(ps[2].grad, rs[2].grad[sl])
    _finish()


def run_dtensor(rank, world, store, backend):
    """Logits as a DTensor sharded on the class dimension (TorchTitan's loss parallel):
    the same loss and gradient as on the full logits, with an uneven torch.chunk layout."""
    _init(rank, world, store)
    import fused_anl
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (world,))
    k = 8 * world - 3  # uneven: the last rank holds fewer classes
    z, t = make_batch(k, seed=world + 7)
    t[4], t[5] = 0, k - 1
    weight = torch.rand(k, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    for name in ("anl_ce", "nce_rce", "ce"):
        for reduction, w in (("mean", None), ("sum", weight), ("none", None)):
            full = z.clone().requires_grad_(True)
            ref = getattr(fused_anl, name)(full, t, reduction=reduction, weight=w, backend="torch")
            go = torch.linspace(0.5, 1.5, ref.numel(), dtype=ref.dtype).reshape(ref.shape)
            ref.backward(go)
            dz = distribute_tensor(z, mesh, [Shard(1)]).requires_grad_(True)
            out = getattr(fused_anl, name)(dz, t, reduction=reduction, weight=w, backend=backend)
            tag = f"dtensor {name}/{backend}/{reduction} rank {rank}"
            assert tuple(out.placements) == (Replicate(),), tag
            out.backward(distribute_tensor(go, mesh, [Replicate()]))
            torch.testing.assert_close(out.to_local(), ref.detach(), rtol=1e-10, atol=1e-12,
                                       msg=tag)
            torch.testing.assert_close(dz.grad.full_tensor(), full.grad, rtol=1e-10, atol=1e-12,
                                       msg=tag)
    # a module, with a replicated DTensor target
    crit = fused_anl.ANLFLLoss(backend=backend)
    full = z.clone().requires_grad_(True)
    crit(full, t).backward()
    dz = distribute_tensor(z, mesh, [Shard(1)]).requires_grad_(True)
    out = crit(dz, distribute_tensor(t, mesh, [Replicate()]))
    out.backward()
    torch.testing.assert_close(dz.grad.full_tensor(), full.grad, rtol=1e-10, atol=1e-12)
    # layouts that are not class-parallel are refused, by name
    for bad in ([Replicate()], [Shard(0)]):
        try:
            fused_anl.anl_ce(distribute_tensor(z, mesh, bad), t)
        except ValueError as e:
            assert "sharded on the class dimension" in str(e), e
        else:
            raise AssertionError(f"placements {bad} were accepted")
    _finish()


def run_anl_ce_er(rank, world, store, backend):
    """ANL-CE-ER on class shards (rows through the shard path, E with local column sums
    and a global normaliser): the full loss and this rank's gradient slice."""
    _init(rank, world, store)
    import fused_anl
    k = 8 * world
    kl = k // world
    z, t = make_batch(k, seed=world + 3)
    h = dict(alpha=5.0, beta=5.0, lamb=2.0)
    for reduction in ("mean", "sum", "none"):
        full = z.clone().requires_grad_(True)
        ref = fused_anl.reference.anl_ce_er(full, t, reduction=reduction, **h)
        go = torch.linspace(0.5, 1.5, ref.numel(), dtype=ref.dtype).reshape(ref.shape)
        ref.backward(go)
        shard = z[:, rank * kl:(rank + 1) * kl].clone().requires_grad_(True)
        out = fused_anl.anl_ce_er(shard, t, reduction=reduction, backend=backend,
                                  process_group=dist.group.WORLD, **h)
        out.backward(go)
        tag = f"anl_ce_er/{backend}/{reduction} rank {rank}"
        torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12, msg=tag)
        torch.testing.assert_close(shard.grad, full.grad[:, rank * kl:(rank + 1) * kl],
                                   rtol=1e-10, atol=1e-12, msg=tag)
    _finish()


def run_options(rank, world, store):
    """z_loss, CE's label smoothing (no class weights) and return_lse on class shards, both
    backends: the full loss, this rank's gradient slice and the full rows' lse; the soft
    cap and weighted label smoothing are refused with a clear error."""
    _init(rank, world, store)
    import fused_anl
    k = 8 * world
    kl = k // world
    z, t = make_batch(k, seed=world + 5)
    weight = torch.rand(k, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    cases = [("ce", dict(label_smoothing=0.2, z_loss=1e-2), None),
             ("ce", dict(z_loss=1e-2), weight), ("anl_ce", dict(z_loss=1e-3), None),
             ("nce_rce", dict(z_loss=1e-3), weight)]
    for backend in ("torch", "triton"):
        for name, kw, w in cases:
            full = z.clone().requires_grad_(True)
            ref, ref_lse = fused_anl.reference.loss_by_name(name, full, t, weight=w,
                                                            return_lse=True, **kw)
            ref.backward()
            shard = z[:, rank * kl:(rank + 1) * kl].clone().requires_grad_(True)
            out, lse = getattr(fused_anl, name)(shard, t, weight=w, backend=backend,
                                                process_group=dist.group.WORLD,
                                                return_lse=True, **kw)
            out.backward()
            tag = f"{name}/{kw}/{backend} rank {rank}"
            torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12, msg=tag)
            torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12, msg=tag)
            torch.testing.assert_close(shard.grad, full.grad[:, rank * kl:(rank + 1) * kl],
                                       rtol=1e-10, atol=1e-12, msg=tag)
    shard = z[:, rank * kl:(rank + 1) * kl]
    for kw, w in ((dict(logit_softcap=5.0), None), (dict(label_smoothing=0.1), weight)):
        try:
            fused_anl.ce(shard, t, weight=w, process_group=dist.group.WORLD, **kw)
        except ValueError as e:
            assert "not supported with process_group" in str(e), e
        else:
            raise AssertionError(f"{kw} with process_group did not raise")
    _finish()
