"""Fused linear + loss against the unfused reference on hidden @ weight.T + bias."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused_anl

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
        assert torch.autograd.gradcheck(
            lambda a, c, e: fused_anl.linear_loss("anl_ce", a, c, t, e, reduction=reduction,
                                                  chunk_size=2, backend="torch"), ps)


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
