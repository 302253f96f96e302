"""Fused linear + loss against the unfused reference on hidden @ weight.T + bias."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused_anl
from fused_anl import linear
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import DEVICE

ROOT = Path(__file__).resolve().parent.parent
# float64: only summation order differs. float32/bf16: the logits themselves are rounded
# to the input dtype before the loss (in both paths), then gradients of hidden/weight
# are matmuls of rounded logit gradients: bf16 carries ~2^-8 relative error per element.
TOL = {torch.float64: (1e-9, 1e-11), torch.float32: (1e-4, 1e-6), torch.bfloat16: (3e-2, 3e-3)}


def _inputs(n, d, k, dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype).to(DEVICE)
    w = (torch.randn(k, d, generator=g) / d**0.5 * 3).to(dtype).to(DEVICE)
    b = (torch.randn(k, generator=g) * 0.1).to(dtype).to(DEVICE) if bias else None
    t = torch.randint(0, k, (n,), generator=g).to(DEVICE)
    t[1] = -100
    return h, w, b, t


def _grads(loss, params, go=None):
    return torch.autograd.grad(loss, [p for p in params if p is not None], go)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["anl_ce", "anl_fl", "nce_rce"])
def test_linear_matches_unfused(backend, dtype, reduction, name):
    h, w, b, t = _inputs(10, 6, 23, dtype, seed=hash((name, reduction)) % 1000)
    cw = torch.rand(23, device=DEVICE, dtype=torch.float32) + 0.5 if name == "nce_rce" else None
    ps = [x.detach().clone().requires_grad_(True) for x in (h, w, b)]
    rs = [x.detach().double().requires_grad_(True) for x in (h, w, b)]  # float64 oracle
    out = fused_anl.linear_loss(name, ps[0], ps[1], t, ps[2], reduction=reduction, chunk_size=3,
                                backend=backend, class_weight=cw)
    logits = torch.addmm(rs[2], rs[0], rs[1].t())
    logits.retain_grad()
    ref = getattr(fused_anl.reference, name)(logits, t, reduction=reduction, weight=cw)
    go = torch.rand_like(ref) + 0.5 if reduction == "none" else None  # non-uniform per sample
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    got = _grads(out, ps, go.to(out.dtype) if go is not None else None)
    ref.backward(go)
    # A matmul of the logit gradient G: its rounding error scales with |G| @ |other| and
    # with the error of G itself (relative to max|G|, see tests/helpers.py), not with the
    # (possibly cancelled) result.
    G = logits.grad.abs()
    gmax = G.max()
    wa, ha = rs[1].detach().abs(), rs[0].detach().abs()
    mags = (G @ wa + gmax * wa.sum(0), G.t() @ ha + gmax * ha.sum(0), G.sum(0) + gmax * G.shape[0])
    for a, r, p, mag in zip(got, (rs[0].grad, rs[1].grad, rs[2].grad), ps, mags):
        assert a.dtype == p.dtype
        err = (a.double() - r.double()).abs()
        bound = rtol * (r.double().abs() + mag) + atol
        assert torch.all(err <= bound), f"max excess {(err - bound).max():.3g}"


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_linear_without_bias_and_partial_requires_grad(backend):
    h, w, _, t = _inputs(7, 5, 11, torch.float64, bias=False)
    w.requires_grad_(True)
    out = fused_anl.linear_anl_ce(h, w, t, backend=backend, chunk_size=2, alpha=5.0, beta=5.0)
    ref = fused_anl.reference.anl_ce(h @ w.t(), t, alpha=5.0, beta=5.0)
    torch.testing.assert_close(out, ref)
    (gw,) = torch.autograd.grad(out, w)
    (rw,) = torch.autograd.grad(ref, w)
    torch.testing.assert_close(gw, rw)
    module = fused_anl.LinearANLCELoss(alpha=5.0, beta=5.0, backend=backend)
    torch.testing.assert_close(module(h, w, t), ref)
    with torch.no_grad():
        torch.testing.assert_close(fused_anl.linear_loss("anl_ce", h, w, t, alpha=5.0, beta=5.0), ref)


def test_linear_gradcheck():
    h, w, b, t = _inputs(5, 3, 7, torch.float64)
    ps = [x.requires_grad_(True) for x in (h, w, b)]
    for reduction in ("mean", "none"):
        with fused_anl.repeatable_backward():  # gradcheck runs backward per output column
            assert torch.autograd.gradcheck(
                lambda a, c, e: fused_anl.linear_loss("anl_ce", a, c, t, e, reduction=reduction,
                                                      chunk_size=2, backend="torch"), ps)


class _NewTensors(TorchDispatchMode):
    """Records (op, dtype, bytes) of every op output whose storage none of its inputs had:
    the allocations made while the mode is active (ops below a custom op are hidden)."""

    def __init__(self):
        super().__init__()
        self.new = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        seen = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        self.new += [(str(func), t.dtype, t.numel() * t.element_size())
                     for t in pytree.tree_leaves(out)
                     if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen]
        return out


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_linear_no_large_temporaries(backend):
    """bf16, N=12, D=16, K=40, chunks of 3 rows (120 logits): forward (the custom op's
    body) allocates one K x D buffer, the float32 weight gradient, and nothing else larger
    than a chunk's logits in float32 or the hidden gradient; the product ``g.T @ h`` goes in
    slices of at most 120 elements (before: one K x D bf16 temporary per chunk, 1280
    bytes). Backward of a mean scales the saved gradients in place: its only K x D
    allocation is the bf16 weight gradient it returns (before: a float32 product, then
    the bf16 copy). Sizes in bytes (the interpreter copies a chunk as uint8)."""
    n, d, k, chunk = 12, 16, 40, 3
    h, w, b, t = _inputs(n, d, k, torch.bfloat16)
    small = max(chunk * k * 4, n * d * 2)
    spec = fused_anl._registry.spec_of("anl_ce")
    hyper = fused_anl._registry.resolve_hyper(spec, {})
    call = linear._call(fused_anl._hyper.constants(hyper, spec.passive, spec.active), spec.active,
                        spec.passive, False, -100, backend)
    den = torch.tensor([float(n - 1)], device=DEVICE)
    with _NewTensors() as fwd:
        linear._fwd_impl(h, w, b, t, None, call, den, chunk, True, True, True)
    large = [x for x in fwd.new if x[2] > small]
    assert large == [("aten.zeros.default", torch.float32, k * d * 4)], large

    ps = [x.detach().clone().requires_grad_(True) for x in (h, w, b)]
    out = fused_anl.linear_anl_ce(ps[0], ps[1], t, ps[2], chunk_size=chunk, backend=backend)
    with _NewTensors() as bwd:
        grads = torch.autograd.grad(out, ps)
    large = [x for x in bwd.new if x[2] > small]
    assert [x[1:] for x in large] == [(torch.bfloat16, k * d * 2)], large
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_backward_scales_in_place_once(dtype):
    """Backward of a mean/sum multiplies the gradients forward computed by grad_output in
    place (nothing when it is 1): exact for grad_output -0.5, and a second backward through
    the same call raises instead of scaling twice, unless made repeatable."""
    h, w, b, t = _inputs(9, 5, 13, dtype)
    ps = [x.detach().clone().requires_grad_(True) for x in (h, w, b)]

    def call():
        return fused_anl.linear_anl_ce(ps[0], ps[1], t, ps[2], chunk_size=4, reduction="sum")

    with fused_anl.repeatable_backward():
        out = call()
        ones = torch.autograd.grad(out, ps, retain_graph=True)
        assert all(torch.equal(a, c) for a, c in zip(ones, torch.autograd.grad(out, ps)))
    out = call()
    scaled = torch.autograd.grad(out, ps, torch.tensor(-0.5, dtype=out.dtype), retain_graph=True)
    for s_, o in zip(scaled, ones):  # a power of two: exact in every dtype, whichever
        assert torch.equal(s_, o * -0.5)  # rounding (float32 saved, bf16 returned) comes first
    with pytest.raises(RuntimeError, match="backward ran twice"):
        torch.autograd.grad(out, ps)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_linear_float32_product_probe(backend, monkeypatch):
    """The weight gradient of bf16 inputs is accumulated by ``addmm(..., out_dtype=float32)``
    only where a probe saw that op exact on the device. Here (no CUDA kernel for it on the
    CPU) the probe answers None; an op that rounds through bf16 is refused; an exact one
    (a float32 emulation standing in for cuBLAS) is then used for every chunk, and the
    gradients still match the float64 oracle."""
    dev = torch.device(DEVICE)
    if dev.type == "cpu":
        assert linear._probe_float32_addmm(dev, torch.bfloat16) is None
    calls = []

    def rounding(acc, a, b, out_dtype, out):
        return out.add_((a @ b).to(out_dtype))

    def exact(acc, a, b, out_dtype, out):
        calls.append(a.shape)
        return out.add_(a.to(out_dtype) @ b.to(out_dtype))

    monkeypatch.setattr(linear, "_FLOAT32_ADDMM", {})
    assert linear._probe_float32_addmm(dev, torch.bfloat16, rounding) is None
    linear._FLOAT32_ADDMM.clear()
    assert linear._probe_float32_addmm(dev, torch.bfloat16, exact) is exact
    calls.clear()
    h, w, b, t = _inputs(10, 6, 23, torch.bfloat16)
    ps = [x.detach().clone().requires_grad_(True) for x in (h, w, b)]
    out = fused_anl.linear_anl_ce(ps[0], ps[1], t, ps[2], chunk_size=3, backend=backend)
    gw = torch.autograd.grad(out, ps[1])[0]
    assert calls == [(23, 3)] * 3 + [(23, 1)]  # one accumulating product per chunk of rows
    rs = [x.detach().double().requires_grad_(True) for x in (h, w, b)]
    ref = fused_anl.reference.anl_ce(torch.addmm(rs[2], rs[0], rs[1].t()), t)
    (rw,) = torch.autograd.grad(ref, rs[1])
    rtol, atol = TOL[torch.bfloat16]
    torch.testing.assert_close(gw.double(), rw, rtol=rtol, atol=atol)


def test_linear_bad_input():
    h, w, b, t = _inputs(4, 3, 6, torch.float32)
    with pytest.raises(ValueError, match="D=3"):
        fused_anl.linear_loss("anl_ce", h, w[:, :2], t)
    with pytest.raises(TypeError, match="share a dtype"):
        fused_anl.linear_loss("anl_ce", h.double(), w, t)
    with pytest.raises(ValueError, match="labels must lie"):
        fused_anl.linear_loss("anl_ce", h, w, torch.full_like(t, 6))
    with pytest.raises(ValueError, match="unknown loss"):
        fused_anl.linear_loss("xent", h, w, t)


def test_linear_compiles_fullgraph():
    h, w, b, t = _inputs(8, 4, 9, torch.float32)
    lin = torch.nn.Linear(4, 9).to(DEVICE)

    def step(x):
        return fused_anl.linear_anl_ce(x, lin.weight, t, lin.bias, chunk_size=3)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    out = compiled(h)
    out.backward()
    g = lin.weight.grad.clone()
    lin.zero_grad()
    ref = fused_anl.reference.anl_ce(lin(h), t)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, lin.weight.grad)


MEMORY_SCRIPT = r"""
import json, resource, sys, torch
torch.manual_seed(0)
n, d, k = 8192, 512, 32768
h = torch.randn(n, d, requires_grad=True)
w = (torch.randn(k, d) / d**0.5).requires_grad_(True)
t = torch.randint(0, k, (n,))
import fused_anl
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "fused":
    loss = fused_anl.linear_anl_ce(h, w, t, backend="torch")
else:
    loss = fused_anl.reference.anl_ce(h @ w.t(), t)
loss.backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mib": (peak - base) / 1024, "loss": loss.item()}))
"""


def test_linear_memory_is_5x_below_unfused_on_cpu():
    """Peak RSS growth (KiB from getrusage) in fresh processes: inputs allocated first."""
    res = {}
    for mode in ("fused", "unfused"):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, mode], capture_output=True,
                             text=True, timeout=600, env={"PYTHONPATH": str(ROOT),
                                                          "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(res)
    assert abs(res["fused"]["loss"] - res["unfused"]["loss"]) < 1e-4
    assert res["unfused"]["extra_mib"] >= 5 * res["fused"]["extra_mib"], res
