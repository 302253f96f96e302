"""Shared test inputs and the error bounds each dtype must meet.

Error model (compared with the float64 reference on the *same* input values, so
rounding of the inputs themselves is not counted):

- float64 logits: the kernels compute in float64; only summation order differs from
  the reference, so values and gradients agree to ~1e-13 relative. Bound: 1e-10.
- float32 / bfloat16 / float16 logits: float32 arithmetic. lse and the row sums
  carry about (log2(block) + #blocks) * 2^-24 relative error (tree sums inside a
  block, sequential across blocks) and exp() amplifies an absolute error in
  ``z - lse`` of about 2^-24 * max|z| <= 4e-6 for |z| <= 30 (on the GPU, exp is
  ex2.approx and the focal weight's log2 lg2.approx, kernels/_terms.py ``fast_exp`` and
  ``fast_log2``: a few 2^-24 more, relative, far inside the bound). Bound on values:
  2e-5 * max(1, |ref|); on gradients: 2e-5 * max|g_ref| + 2e-5 * |g_ref|.
- where a gradient element is a small difference of large terms (confident rows,
  K = 2, logits of scale 30), float32 cannot resolve it however it is computed: the
  float32 reference (the published computation) is off there too. We allow twice
  the float32 reference's largest gradient error on top of the bound above.
- the gradient is then rounded to the logits' dtype, once in forward and once when
  backward multiplies by grad_output: add 2 * 2^-8 * |g_ref| for bfloat16 and
  2 * 2^-11 * |g_ref| for float16, plus float16's subnormal spacing 2^-24 as an
  absolute floor (gradients of order p_j / N underflow there).
"""
import torch

import fused_anl

GRAD_ROUNDING = {torch.float64: 0.0, torch.float32: 0.0, torch.bfloat16: 2 * 2.0**-8,
                 torch.float16: 2 * 2.0**-11}
GRAD_FLOOR = {torch.float64: 0.0, torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 2.0**-24}


def compute_tol(dtype):
    return 1e-10 if dtype == torch.float64 else 2e-5


def edge_case_batch(n, k, *, scale=3.0, dtype=torch.float32, device="cpu", seed=0,
                    ignore_index=-100, edge_rows=True):
    """Random logits with the edge cases of docs/semantics.md in the first rows.

    row 0: confident (label logit 30 above the rest); row 1: scale 30, so many
    p_k < p_min; row 2: a padded vocabulary (the last third of the classes -inf);
    row 3: ignored. The remaining rows are N(0, scale^2).
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * scale
    t = torch.randint(0, k, (n,), generator=g)
    if edge_rows and n >= 4:
        z[0] = torch.randn(k, generator=g)
        z[0, t[0]] = z[0].max() + 30.0
        z[1] = torch.randn(k, generator=g) * 30.0
        if k >= 3:
            cut = max(2, k - k // 3)
            z[2, cut:] = float("-inf")
            t[2] = torch.randint(0, cut, (1,), generator=g)
        t[3] = ignore_index
    return z.to(dtype).to(device), t.to(device)


def same_layout_copy(z):
    """A copy of z with z's strides and storage offset (``clone`` would make a slice or a
    transposed view contiguous, so a kernel test would never see the caller's layout)."""
    buf = torch.empty(z.untyped_storage().nbytes() // z.element_size(), dtype=z.dtype,
                      device=z.device)
    out = buf.as_strided(z.shape, z.stride(), z.storage_offset())
    out.copy_(z.detach())
    return out


def loss_and_grad(fn, z, t, **kw):
    z = same_layout_copy(z).requires_grad_(True)
    out = fn(z, t, **kw)
    (g,) = torch.autograd.grad(out.sum(), z)
    return out.detach(), g


def reference_f64(name, z, t, **kw):
    return loss_and_grad(getattr(fused_anl.reference, name), z.double(), t, **kw)


def assert_close_to_reference(name, z, t, *, value, grad, **kw):
    """Compare a fused (value, grad) with the float64 reference under the error model."""
    ref_v, ref_g = reference_f64(name, z, t, **kw)
    tol = compute_tol(z.dtype)
    expected_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    assert value.dtype == expected_dtype, f"{name}: loss dtype {value.dtype}"
    assert grad.dtype == z.dtype, f"{name}: grad dtype {grad.dtype} for {z.dtype} logits"
    err_v = (value.double() - ref_v).abs()
    bound_v = tol * ref_v.abs().clamp_min(1.0)
    assert torch.all(err_v <= bound_v), f"{name}: value error {err_v.max():.3g} > bound (ref {ref_v})"
    gd = grad.double()
    err_g = (gd - ref_g).abs()
    floor32 = 0.0
    if z.dtype != torch.float64:
        _, g32 = loss_and_grad(getattr(fused_anl.reference, name), z.float(), t, **kw)
        floor32 = 2 * (g32.double() - ref_g).abs().max()
    bound_g = (tol * ref_g.abs().max() + (tol + GRAD_ROUNDING[z.dtype]) * ref_g.abs()
               + GRAD_FLOOR[z.dtype] + floor32)
    worst = (err_g - bound_g).argmax()
    assert torch.all(err_g <= bound_g), (
        f"{name}: grad error {err_g.flatten()[worst]:.3g} at {worst.item()} "
        f"(ref {ref_g.flatten()[worst]:.3g}, bound {bound_g.flatten()[worst]:.3g})")
