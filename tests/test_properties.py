"""Property tests: random shapes and values, fused == reference, NNCE in [0, 1]."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fused_anl

from conftest import DEVICE


@st.composite
def batches(draw):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(2, 40))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, k, (n,), generator=g)
    if draw(st.booleans()) and k > 2:  # pad some classes, never the label
        pad = torch.rand(n, k, generator=g) < 0.3
        pad[torch.arange(n), t] = False
        pad[torch.arange(n), (t + 1) % k] = False  # keep two present classes per row
        z[pad] = float("-inf")
    if draw(st.booleans()):
        t[0] = -100
    return z.to(DEVICE), t.to(DEVICE)


@settings(max_examples=30, deadline=None, derandomize=True)  # the same examples every run (CI)
@given(batches(), st.sampled_from(["triton", "torch"]),
       st.sampled_from(["anl_ce", "nnce", "anl_fl", "nce_rce", "sce", "nce_agce"]))
def test_fused_equals_reference_and_stays_in_range(batch, backend, name):
    z, t = batch
    out = getattr(fused_anl, name)(z, t, backend=backend, reduction="none")
    ref = fused_anl.reference.__dict__[name](z, t, reduction="none")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    if name == "nnce":
        assert ((out >= 0) & (out <= 1)).all()
