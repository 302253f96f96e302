"""The published training recipe, as small reusable pieces.

SGD with momentum 0.9 and a cosine schedule; gradient-norm clipping at 5.0; for the
ANL losses weight decay 0 and an L1 penalty ``delta * sum |theta|`` over every
parameter (biases and norm layers included), added to the loss before backward and
hence before clipping (the ANL modules return it from ``regularizer(model)``); weight
decay for the other losses.
"""
from __future__ import annotations

import torch

ANL_LOSSES = ("anl_ce", "anl_fl")


def l1_penalty(parameters) -> torch.Tensor:
    """``sum |theta|`` over ``parameters`` (a module or an iterable of tensors), with
    multi-tensor (foreach) norms instead of a Python loop of small reductions."""
    if isinstance(parameters, torch.nn.Module):
        parameters = parameters.parameters()
    params = list(parameters)
    if not params:
        return torch.zeros(())
    norms = torch._foreach_norm(params, 1)  # differentiable: d|theta|_1 / dtheta = sign(theta)
    acc = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    return torch.stack([n.to(acc) for n in norms]).sum()


def make_optimizer(model, loss_name: str, lr: float, weight_decay: float = 5e-4, epochs: int = 100):
    """SGD(momentum 0.9) with weight decay 0 for ANL losses, and a cosine schedule."""
    wd = 0.0 if loss_name in ANL_LOSSES else weight_decay
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler=None, *,
                    l1_delta: float | None = None, clip: float = 5.0, device="cpu"):
    """One epoch of the published recipe: loss plus ANL's L1 term, backward, clip the
    gradient norm, step; then one scheduler step if given. Returns the mean loss.

    Args:
        l1_delta (float, optional): the L1 weight. ``None`` (the default) takes the
            loss module's own term, ``loss_fn.regularizer(model)`` (``delta`` of the ANL
            modules, zero for the other losses); a number overrides it.
    """
    model.train()
    total, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = loss_fn(model(x), y)
        if l1_delta is None:
            if hasattr(loss_fn, "regularizer"):
                loss = loss + loss_fn.regularizer(model)
        else:
            if hasattr(loss_fn, "regularizer"):
                loss_fn._regularizer_asked = True  # the caller chose the L1 weight
            if l1_delta:
                loss = loss + l1_delta * l1_penalty(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += loss.detach() * len(y)
        count += len(y)
    if scheduler is not None:
        scheduler.step()
    return float(total / max(count, 1))


@torch.no_grad()
def evaluate(model, loader, device="cpu") -> float:
    """Accuracy in [0, 1]."""
    model.eval()
    correct, count = 0, 0
    for x, y in loader:
        pred = model(x.to(device)).argmax(1)
        correct += int((pred == y.to(device)).sum())
        count += len(y)
    return correct / max(count, 1)
