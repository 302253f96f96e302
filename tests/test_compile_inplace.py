"""torch.compile (fullgraph) through the custom op, and inplace_backward."""
import pytest
import torch

import fused_anl

from conftest import DEVICE


class Head(torch.nn.Module):
    def __init__(self, name, k=13):
        super().__init__()
        self.lin = torch.nn.Linear(8, k)
        self.loss = fused_anl.get_loss(name)

    def forward(self, x, t):
        return self.loss(self.lin(x), t)


@pytest.mark.parametrize("name", ["anl_ce", "anl_fl", "nce_rce"])
def test_compile_fullgraph_matches_eager(name):
    torch.manual_seed(0)
    model = Head(name).to(DEVICE)
    x = torch.randn(16, 8, device=DEVICE)
    t = torch.randint(0, 13, (16,), device=DEVICE)
    t[3] = -100
    eager = model(x, t)
    eager.backward()
    g_eager = model.lin.weight.grad.clone()
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    out = compiled(x, t)
    out.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(model.lin.weight.grad, g_eager)


def test_custom_op_passes_opcheck():
    z = torch.randn(4, 7, 1, device=DEVICE, dtype=torch.float64)
    t = torch.randint(0, 7, (4,), device=DEVICE)
    from fused_anl import _hyper, _registry
    h = _registry.resolve_hyper(_registry.LOSSES["anl_ce"], {})
    args = (z, t, None, _hyper.constants(h, _registry.P_NNCE), None, _registry.A_NCE,
            _registry.P_NNCE, False, -100, True, "torch")
    torch.library.opcheck(torch.ops.fused_anl.row_loss.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_inplace_backward_writes_grad_into_logits(backend, reduction):
    torch.manual_seed(1)
    w = torch.randn(13, 8, device=DEVICE, dtype=torch.float64, requires_grad=True)
    x = torch.randn(6, 8, device=DEVICE, dtype=torch.float64)
    t = torch.randint(0, 13, (6,), device=DEVICE)
    go = torch.rand(6, device=DEVICE, dtype=torch.float64) if reduction == "none" else None
    logits = x @ w.t()
    ref = fused_anl.reference.anl_fl(logits, t, reduction=reduction)
    (g_ref,) = torch.autograd.grad(ref, w, go)
    logits = x @ w.t()
    ptr = logits.data_ptr()
    out = fused_anl.anl_fl(logits, t, reduction=reduction, backend=backend, inplace_backward=True)
    torch.testing.assert_close(out, ref.detach())
    (g,) = torch.autograd.grad(out, w, go)
    torch.testing.assert_close(g, g_ref)
    assert logits.data_ptr() == ptr and logits._version > 0  # the storage now holds the gradient


def test_inplace_backward_refuses_later_use_of_the_logits():
    w = torch.randn(5, 4, device=DEVICE, requires_grad=True)
    logits = torch.randn(3, 4, device=DEVICE) @ w.t()
    t = torch.randint(0, 5, (3,), device=DEVICE)
    other = (logits * logits).sum()  # mul saves logits for its backward
    loss = fused_anl.anl_ce(logits, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()
    leaf = torch.randn(3, 5, device=DEVICE, requires_grad=True)
    with pytest.raises(ValueError, match="leaf"):
        fused_anl.anl_ce(leaf, t, inplace_backward=True)
