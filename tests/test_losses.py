"""Every loss, every backend and kernel path, against the float64 reference."""
import pytest
import torch

import fused_anl
from fused_anl import _torch_backend
from fused_anl.kernels import launch

from conftest import DEVICE, PATHS, PERSISTENT
from helpers import assert_close_to_reference, edge_case_batch, loss_and_grad, reference_f64

ALL = sorted(fused_anl.LOSSES)
FOCAL = [n for n in ALL if fused_anl.LOSSES[n].focal]
CORE = ["anl_ce", "nce", "nnce"]


IMPLS = [f"triton-{p}" for p in PATHS] + ["torch"]


def _fused(name, z, t, backend, **kw):
    """backend: "triton", "torch", or "triton-<path>" to force a kernel path."""
    if backend.startswith("triton-"):
        with launch.config(**dict(PATHS, persistent=PERSISTENT)[backend.split("-", 1)[1]]):
            return loss_and_grad(getattr(fused_anl, name), z, t, backend="triton", **kw)
    return loss_and_grad(getattr(fused_anl, name), z, t, backend=backend, **kw)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_every_path_matches_reference(name, dtype, kernel_path):
    z, t = edge_case_batch(8, 37, dtype=dtype, device=DEVICE, seed=1)
    v, g = _fused(name, z, t, "triton", reduction="none")
    assert_close_to_reference(name, z, t, value=v, grad=g, reduction="none")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_backend_matches_reference(name, dtype, monkeypatch):
    monkeypatch.setattr(_torch_backend, "CHUNK_ELEMENTS", 3 * 37)  # several row chunks
    z, t = edge_case_batch(8, 37, dtype=dtype, device=DEVICE, seed=2)
    v, g = _fused(name, z, t, "torch", reduction="none")
    assert_close_to_reference(name, z, t, value=v, grad=g, reduction="none")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("k", [2, 3, 10, 1000, 5000, 4099])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_core_losses_over_k_and_scale(backend, k, scale):
    z, t = edge_case_batch(6, k, scale=scale, device=DEVICE, seed=k)
    for name in CORE:
        v, g = _fused(name, z, t, backend)
        assert_close_to_reference(name, z, t, value=v, grad=g)


@pytest.mark.parametrize("k", [1000, 5000])
def test_large_k_streaming_and_split_paths(k):
    z, t = edge_case_batch(4, k, scale=3.0, device=DEVICE, seed=3)
    for cfg in (dict(max_single_k=512, block_k=256),
                dict(max_single_k=512, block_k=256, split_chunk=1024, split_max_rows=64)):
        with launch.config(**cfg):
            for name in ("anl_ce", "anl_fl", "nce_rce"):
                v, g = _fused(name, z, t, "triton")
                assert_close_to_reference(name, z, t, value=v, grad=g)


@pytest.mark.parametrize("backend", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("name", ["anl_ce", "anl_fl", "nce_rce", "ce", "gce"])
def test_low_precision_logits(backend, dtype, name):
    z, t = edge_case_batch(8, 37, scale=3.0, dtype=dtype, device=DEVICE, seed=4)
    v, g = _fused(name, z, t, backend)
    assert_close_to_reference(name, z, t, value=v, grad=g)


@pytest.mark.parametrize("name", FOCAL)
@pytest.mark.parametrize("backend", IMPLS)
def test_exact_focal_gradient(name, backend):
    z, t = edge_case_batch(8, 37, dtype=torch.float64, device=DEVICE, seed=5)
    v, g = _fused(name, z, t, backend, detach_focal_weight=False)
    assert_close_to_reference(name, z, t, value=v, grad=g, detach_focal_weight=False)
    _, g_detached = _fused(name, z, t, backend)
    assert not torch.allclose(g, g_detached), "exact and detached focal gradients must differ"


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["anl_ce", "anl_fl", "sce"])
def test_reductions_weights_and_grad_output(backend, reduction, name):
    z, t = edge_case_batch(8, 11, device=DEVICE, seed=6, dtype=torch.float64)
    w = torch.rand(11, dtype=torch.float64, device=DEVICE) + 0.5
    zf = z.clone().requires_grad_(True)
    zr = z.clone().requires_grad_(True)
    out = getattr(fused_anl, name)(zf, t, reduction=reduction, weight=w, backend=backend)
    ref = getattr(fused_anl.reference, name)(zr, t, reduction=reduction, weight=w)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    go = torch.randn_like(ref)  # a non-uniform grad_output for "none", any scalar otherwise
    out.backward(go)
    ref.backward(go)
    torch.testing.assert_close(zf.grad, zr.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 7, 3, 4)])
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32])
def test_nd_inputs_and_int32_targets(backend, shape, target_dtype):
    g = torch.Generator().manual_seed(7)
    z = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(DEVICE)
    tshape = (shape[0],) + shape[2:]
    t = torch.randint(0, shape[1], tshape, generator=g).to(DEVICE)
    t.view(-1)[1] = -100
    for reduction in ("none", "mean"):
        v, gr = _fused("anl_ce", z, t.to(target_dtype), backend, reduction=reduction)
        assert_close_to_reference("anl_ce", z, t, value=v, grad=gr, reduction=reduction)
    assert v.shape == () and gr.shape == z.shape


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_non_contiguous_logits_are_read_in_place_and_untouched(backend):
    base, t = edge_case_batch(8, 40, device=DEVICE, seed=8, dtype=torch.float64)
    z = base.t().contiguous().t()[:, ::2]  # column-major, every other class: strides (1, 16)
    assert not z.is_contiguous()
    t = t.clamp(max=19)
    t[2], t[3] = 0, -100  # row 2 is padded: keep its label on a present class
    before = z.clone()
    v, g = _fused("anl_fl", z, t, backend)
    assert_close_to_reference("anl_fl", z, t, value=v, grad=g)
    assert torch.equal(z, before), "the caller's logits must not change"


@pytest.mark.parametrize("name", ["anl_ce", "anl_fl", "nce_rce", "ce", "gce"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_persistent_grid_matches_reference(name, dtype):
    z, t = edge_case_batch(8, 37, dtype=dtype, device=DEVICE, seed=12)
    v, g = _fused(name, z, t, "triton-persistent", reduction="none")
    assert_close_to_reference(name, z, t, value=v, grad=g, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_aligned_row_views_every_path(dtype, kernel_path):
    """Rows whose starts are multiples of 16 bytes, where the kernels are told so (VEC > 1,
    kernels/launch.py row_vec): a plain batch, a column slice of wider rows, a row slice,
    and (N, D, K) logits seen as (N, K, D). A wrong divisibility claim would shift the rows
    read (the interpreter executes the same index arithmetic), so this checks the claim."""
    from fused_anl.kernels.launch import row_vec

    z0, t0 = edge_case_batch(8, 24, dtype=torch.float64, device=DEVICE, seed=11)
    z0 = z0.to(dtype)  # views are made after the cast (a cast would copy them)
    wide = torch.randn(9, 40, device=DEVICE).to(dtype)
    wide[1:, :24] = z0
    odd = torch.randn(8, 43, device=DEVICE).to(dtype)  # row starts 43 apart: 1 (mod 2)
    odd[:, :24] = z0
    nd = (torch.randn(4, 2, 24, device=DEVICE) * 3).to(dtype)
    views = [(z0, t0, True), (wide[1:, :24], t0, True), (odd[:, :24], t0, False),
             (nd.transpose(1, 2), t0[:8].view(4, 2), True)]
    for z, t, aligned in views:
        assert (row_vec(z.unsqueeze(-1) if z.dim() == 2 else z) > 1) == aligned
        v, g = _fused("anl_ce", z, t, "triton", reduction="none")
        assert_close_to_reference("anl_ce", z, t, value=v, grad=g, reduction="none")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored(backend, reduction):
    """As F.cross_entropy: "mean" of no sample is 0/0 = NaN, "sum"/"none" are 0, and the
    gradient is exactly 0 either way."""
    z = torch.randn(4, 9, device=DEVICE, requires_grad=True)
    t = torch.full((4,), -100, device=DEVICE)
    out = fused_anl.anl_ce(z, t, reduction=reduction, backend=backend)
    expected = torch.nn.functional.cross_entropy(z.detach(), t, reduction=reduction)
    torch.testing.assert_close(out, expected.to(out.dtype), equal_nan=True)
    assert torch.isnan(out).all() if reduction == "mean" else torch.all(out == 0)
    out.sum().backward()
    assert torch.all(z.grad == 0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_custom_ignore_index_and_empty_batch(backend):
    z, t = edge_case_batch(6, 9, device=DEVICE, seed=9, ignore_index=4, dtype=torch.float64)
    t[t == -100] = 4
    v, g = _fused("nce_rce", z, t, backend, ignore_index=4)
    assert_close_to_reference("nce_rce", z, t, value=v, grad=g, ignore_index=4)
    empty = fused_anl.anl_ce(torch.zeros(0, 5, device=DEVICE), torch.zeros(0, dtype=torch.long,
                             device=DEVICE), backend=backend, reduction="sum")
    assert empty.item() == 0.0


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_backward_twice_raises_and_forward_only_skips_grad(backend):
    z = torch.randn(4, 9, device=DEVICE, requires_grad=True)
    t = torch.randint(0, 9, (4,), device=DEVICE)
    out = fused_anl.anl_ce(z, t, backend=backend)
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="repeatable_backward"):
        out.backward()
    z.grad = None
    with fused_anl.repeatable_backward():
        out2 = fused_anl.anl_ce(z, t, backend=backend)
    (g1,) = torch.autograd.grad(out2, z, retain_graph=True)
    (g2,) = torch.autograd.grad(out2, z, grad_outputs=torch.tensor(2.0, device=DEVICE))
    torch.testing.assert_close(g2, 2 * g1)
    with torch.no_grad():
        v = fused_anl.anl_ce(z, t, backend=backend)
    torch.testing.assert_close(v, out.detach())


def test_backends_agree_with_each_other():
    z, t = edge_case_batch(8, 37, device=DEVICE, seed=10)
    for name in ALL:
        a = _fused(name, z, t, "triton", reduction="none")
        b = _fused(name, z, t, "torch", reduction="none")
        torch.testing.assert_close(a[0], b[0], rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(a[1], b[1], rtol=2e-5, atol=2e-6)


def test_nnce_range_and_uniform_values():
    k = 10
    z = torch.zeros(3, k, device=DEVICE)
    t = torch.tensor([0, 4, 9], device=DEVICE)
    for backend in ("triton", "torch"):
        torch.testing.assert_close(fused_anl.nce(z, t, backend=backend), torch.tensor(1 / k, device=DEVICE))
        torch.testing.assert_close(fused_anl.nnce(z, t, backend=backend), torch.tensor(1 - 1 / k, device=DEVICE))


def test_nnce_zero_gradient_below_p_min():
    z = torch.zeros(2, 6, device=DEVICE, dtype=torch.float64)
    z[0, 1] = 40.0  # row 0: p_0 = e^-40 < 1e-7
    z[1, 1] = 3.0  # row 1: every p_k above p_min
    t = torch.tensor([0, 1], device=DEVICE)
    for backend in ("triton", "torch"):
        zz = z.clone().requires_grad_(True)
        fused_anl.nnce(zz, t, reduction="none", backend=backend)[0].backward()
        assert torch.all(zz.grad == 0)
        zz.grad = None
        fused_anl.nnce(zz, t, reduction="none", backend=backend)[1].backward()
        assert zz.grad[1].abs().sum() > 0  # p_y above p_min: the gradient flows


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name", ["ce", "anl_ce", "nce_rce", "nce_amse", "anl_fl"])
def test_label_column_at_block_edges(name, inplace, dtype, kernel_path):
    """The gradient's label column is written after the others, from the label logit read
    before them (kernels/row_loss.py ``_label_grad``, ``_store_label``): labels on the
    first and last column of a block, in the partial block, at both ends of the row; a
    row whose label is the ignore_index, inside [0, K), has a zero gradient and no label
    column; with ``inplace_backward`` the gradient overwrites the logits (the label
    logit must have been read before). Blocks of 8 columns: float64 passes go
    [0, 8), [8, 16), ... [32, 37); bf16 passes take the 37 % 8 = 5 leftover columns first
    (``_first_block_end``): [0, 5), [5, 13), [13, 21), [21, 29), [29, 37)."""
    k, ignore = 37, 5
    labels = [0, 4, 7, 8, 12, 13, 15, 16, 20, 21, 28, 29, 31, 32, 36, ignore]
    gen = torch.Generator().manual_seed(3)
    z = (3 * torch.randn(len(labels), k, generator=gen, dtype=torch.float64)).to(dtype)
    z = z.to(DEVICE)
    t = torch.tensor(labels, device=DEVICE)
    if inplace:
        leaf = z.clone().requires_grad_(True)
        logits = leaf * 1.0
        v = getattr(fused_anl, name)(logits, t, reduction="none", ignore_index=ignore,
                                     backend="triton", inplace_backward=True)
        (g,) = torch.autograd.grad(v.sum(), leaf)
        v = v.detach()
    else:
        v, g = loss_and_grad(getattr(fused_anl, name), z, t, backend="triton", reduction="none",
                             ignore_index=ignore)
    assert_close_to_reference(name, z, t, value=v, grad=g, reduction="none",
                              ignore_index=ignore)
    assert torch.all(g[-1] == 0)


@pytest.mark.parametrize("name", ["anl_ce", "nce_rce", "anl_fl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streaming_with_several_tile_rows_per_thread(name, dtype):
    """The streaming statistics keep one lane of online max/sums per thread over all the
    16-byte tile rows it holds (kernels/row_loss.py ``_lane_tile``, REPS rows per thread).
    The other tests' blocks of 8 columns give every thread at most one row; here blocks of
    2048 columns over 4 warps give 4 (float32) or 2 (bf16) rows per thread, on rows of
    5000 classes (two full blocks and a partial one) with -inf classes, confident rows and
    an ignored one."""
    k = 5000
    cfg = dict(max_single_k=16, block_k=2048, split_max_rows=0)
    z, t = edge_case_batch(6, k, dtype=dtype, device=DEVICE, seed=11)
    with launch.config(**cfg):
        pl = launch.plan(z.shape[0], k, elem_bytes=z.element_size())
        assert pl.path == "stream" and launch._lane_reps(z.reshape(6, k, 1), pl) > 1
        v, g = loss_and_grad(getattr(fused_anl, name), z, t, backend="triton", reduction="none")
    assert_close_to_reference(name, z, t, value=v, grad=g, reduction="none")


@pytest.mark.parametrize("name", ["rce", "nfl_rce"])
def test_rce_gradient_on_a_confident_wrong_class(name, kernel_path):
    """RCE's gradient is ``A4 p_j (1 - Q)`` on Q's classes: on a row that puts nearly all
    its mass on a wrong class j, ``1 - Q`` is ~1e-5 and the kernels take it from the sum
    of the other p's (kernels/_terms.py ``rce_epilogue``) and write ``p_j`` times that
    coefficient (a ``p_select`` term, kernels/row_loss.py ``_grad_combine``). Written as
    ``c2 p_j + c3 e_j`` (``-A4 Q p_j + A4 p_j``) it cancels to a relative error of about
    2^-24 / (1 - Q) in float32 (the kernels of that form: 0.29 for ``rce`` and 0.009
    for ``nfl_rce`` on these rows). Every element of such rows, the confident class
    included, within 2e-5 of the float64 reference, relative to itself."""
    k = 37
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(4, k, generator=gen, dtype=torch.float64)
    t = torch.tensor([3, 0, 36, 17])
    wrong = torch.tensor([20, 36, 0, 18])
    z[torch.arange(4), wrong] = z.max(1).values + torch.tensor([11.0, 12.0, 13.0, 14.0])
    z = z.float().to(DEVICE)
    t = t.to(DEVICE)
    v, g = loss_and_grad(getattr(fused_anl, name), z, t, backend="triton", reduction="none")
    _, ref = reference_f64(name, z, t, reduction="none")
    q_gap = torch.softmax(z.double(), 1)[torch.arange(4), t.to(z.device)]
    assert torch.all(q_gap < 1e-4)  # 1 - Q: the label's p (every other p is over 1e-7)
    err = (g.double() - ref).abs()
    assert torch.all(err <= 2e-5 * ref.abs()), (err / ref.abs()).max()
