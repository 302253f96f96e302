"""Benchmark harness: implementations, timing, bandwidth accounting and peak memory.

A *case* is (loss, dtype, N, K, mode); its inputs are built once, on the device, and
every implementation runs on them:

- ``fused``        ``fused_anl.<loss>(z, t)`` (backend "auto": Triton on CUDA, the
                   analytic PyTorch path on CPU),
- ``fused_torch``  ``fused_anl.<loss>(z, t, backend="torch")`` (CUDA only: on CPU it
                   is ``fused``),
- ``eager``        ``fused_anl.reference.<loss>`` (autograd through PyTorch ops),
- ``compiled``     ``torch.compile(fused_anl.reference.<loss>, dynamic=False)``,
                   compiled afresh for each case (static shapes; compile time is
                   excluded: it happens in the warm-up); skipped on CPU unless
                   BENCH_COMPILE_CPU=1,
- ``torch_ce``     ``F.cross_entropy`` (loss ``ce`` only),
- ``liger``        Liger-Kernel's ``LigerCrossEntropyLoss`` (``ce`` only, CUDA, when
                   importable; it writes its gradient into the logits, so it runs last).

Modes: ``fwd`` calls the loss under ``torch.no_grad()`` on logits that do not require
grad; ``fwd+bwd`` runs ``loss = fn(z, t); loss.backward()`` on the mean, with
``z.grad = None`` before each repetition.

Timing: CUDA events around each repetition (the L2 cache is flushed by writing a
256 MiB buffer before each one, outside the timed region), ``time.perf_counter`` on
CPU; warm-up first, then the median of several repetitions (their number adapts to
the duration of a call, within bounds).

Bytes counted: the logits read once, plus, for fwd+bwd, the gradient written once (the
logits' dtype both); labels and per-row scalars are ignored. Effective bandwidth is
bytes / median time. The roofline is a device-to-device copy ``dst.copy_(src)`` of a
buffer of the logits' size, measured in the same run: copy bandwidth = 2 x bytes / time.

Peak memory beyond the inputs: on CUDA, ``torch.cuda.max_memory_allocated()`` during
one call (after ``reset_peak_memory_stats``) minus ``memory_allocated()`` just before
it (the gradient of the previous repetition freed first), so fwd+bwd includes the
N x K gradient that the call leaves behind. On CPU, in a fresh subprocess: inputs are
built and a tiny warm-up call loads the code, then the kernel's peak-RSS counter is
reset (``echo 5 > /proc/self/clear_refs``) and the figure is ``VmHWM - VmRSS`` read
from ``/proc/self/status`` around one call (without clear_refs: the growth of
``getrusage().ru_maxrss``).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fused_anl  # noqa: E402

IMPL_ORDER = ["fused", "fused_torch", "eager", "compiled", "torch_ce", "liger"]
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def fused_backend(device: str) -> str:
    """What backend="auto" resolves to for tensors on ``device``."""
    try:
        return fused_anl.functional.resolve_backend("auto", torch.device(device))
    except Exception:  # pragma: no cover - API not there yet
        return "?"


def _liger():
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except Exception as e:  # noqa: BLE001
        return None, f"liger_kernel not importable ({type(e).__name__})"
    return LigerCrossEntropyLoss(), None


def implementations(loss: str, device: str, compile_cpu: bool | None = None):
    """Two dicts: name -> callable(logits, target) for the implementations that can run
    here, and name -> reason for those that cannot. ``compiled`` is a factory marker:
    call :func:`compiled_fn` per case."""
    if compile_cpu is None:
        compile_cpu = os.environ.get("BENCH_COMPILE_CPU") == "1"
    impls, skipped = {}, {}
    fused_fn = getattr(fused_anl, loss, None)
    if fused_fn is None or not callable(fused_fn):
        skipped["fused"] = f"fused_anl.{loss} is not implemented"
        skipped["fused_torch"] = skipped["fused"]
    else:
        impls["fused"] = lambda z, t: fused_fn(z, t)
        if device == "cpu":
            skipped["fused_torch"] = "same as fused on cpu (backend='auto' is the torch path)"
        else:
            impls["fused_torch"] = lambda z, t: fused_fn(z, t, backend="torch")
    ref = getattr(fused_anl.reference, loss, None)
    if ref is None:
        skipped["eager"] = skipped["compiled"] = f"fused_anl.reference.{loss} does not exist"
    else:
        impls["eager"] = ref
        if device == "cpu" and not compile_cpu:
            skipped["compiled"] = "torch.compile skipped on cpu (--cpu-compile / BENCH_COMPILE_CPU=1)"
        else:
            impls["compiled"] = "compile-per-case"
    if loss == "ce":
        impls["torch_ce"] = F.cross_entropy
        if device != "cuda":
            skipped["liger"] = f"Liger-Kernel needs CUDA (device {device})"
        else:
            mod, why = _liger()
            if mod is None:
                skipped["liger"] = why
            else:
                impls["liger"] = lambda z, t: mod(z, t)
    return impls, skipped


def compiled_fn(loss: str):
    """A fresh torch.compile of the reference (static shapes), after clearing dynamo's
    caches so that the per-function recompile limit never falls back to eager."""
    torch._dynamo.reset()
    return torch.compile(getattr(fused_anl.reference, loss), dynamic=False)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


_flush = {}


def _flush_l2(device):
    if device != "cuda":
        return
    buf = _flush.get(device)
    if buf is None:
        buf = _flush[device] = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    buf.zero_()


def time_call(fn, device, *, warmup=1, min_reps=3, max_reps=20, target_s=1.0, deadline=None):
    """Median seconds of fn() over repetitions after ``warmup`` calls. The number of
    repetitions is target_s / (duration of the last warm-up call), within
    [min_reps, max_reps]; it stops early (after min_reps) past ``deadline``
    (a time.monotonic() value). Returns (median, list of times)."""
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        fn()
        sync(device)
    first = time.perf_counter() - t0
    reps = int(min(max_reps, max(min_reps, target_s / max(first, 1e-6))))
    times = []
    for i in range(reps):
        if deadline is not None and i >= min_reps and time.monotonic() > deadline:
            break
        if device == "cuda":
            _flush_l2(device)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times), times


def make_inputs(n, k, dtype, device, seed=0):
    """Logits ~ 3 * N(0, 1) in ``dtype`` and uniform labels, generated on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, k, generator=g, device=device, dtype=torch.float32 if device == "cpu" else dtype)
    z.mul_(3)
    z = z.to(dtype)
    t = torch.randint(0, k, (n,), generator=g, device=device)
    return z, t


def step(fn, z, t, mode):
    """The function timed for one repetition."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(z, t)
        return run
    zz = z.detach().requires_grad_(True)

    def run():
        zz.grad = None
        loss = fn(zz, t)
        loss.backward()
        return loss
    run.leaves = (zz,)
    return run


def _clear_grads(run):
    for leaf in getattr(run, "leaves", ()):
        leaf.grad = None


def case_bytes(n, k, dtype, mode) -> int:
    """Logits read once (+ the gradient written once for fwd+bwd)."""
    b = n * k * torch.empty((), dtype=dtype).element_size()
    return 2 * b if mode == "fwd+bwd" else b


def copy_bandwidth(z, device, reps=10) -> float:
    """Bytes/s of ``dst.copy_(src)`` with a buffer the size of ``z``, counted as read +
    write (2 x bytes)."""
    dst = torch.empty_like(z)
    sec, _ = time_call(lambda: dst.copy_(z), device, warmup=2, min_reps=3, max_reps=reps, target_s=0.5)
    return 2 * z.numel() * z.element_size() / sec


def peak_extra_cuda(run) -> int:
    """Bytes allocated at the peak of one call beyond what was allocated before it."""
    _clear_grads(run)
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    _clear_grads(run)
    return peak


CPU_MEMORY_SCRIPT = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
import torch
from benchmarks import common as C

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

kind, loss, impl, shape, dtype, mode = {args!r}
dtype = C.DTYPES[dtype]
if kind == "loss":
    impls, skipped = C.implementations(loss, "cpu", compile_cpu=impl == "compiled")
    fn = C.compiled_fn(loss) if impl == "compiled" else impls[impl]
    C.step(fn, *C.make_inputs(8, 16, dtype, "cpu"), mode)()  # load the code paths on a tiny input
    run = C.step(fn, *C.make_inputs(*shape, dtype, "cpu"), mode)
else:
    fn = C.linear_implementations(loss, "cpu")[0][impl]
    C.step_linear(fn, *C.make_linear_inputs(8, 4, 16, dtype, "cpu"))()
    run = C.step_linear(fn, *C.make_linear_inputs(*shape, dtype, "cpu"))
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS (VmHWM) := current RSS, so input creation is not counted
    method = "VmHWM-VmRSS"
    base = status("VmRSS:")
except OSError:
    method = "ru_maxrss"
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
loss_value = float(run())
peak = status("VmHWM:") if method != "ru_maxrss" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
grads = sum(x.grad.numel() * x.grad.element_size() for x in getattr(run, "leaves", ()) if x.grad is not None)
print(json.dumps(dict(extra=peak - base, grads=grads, method=method, loss=loss_value)))
"""


def peak_extra_cpu(loss, impl, shape, dtype, mode, kind="loss", timeout=600) -> dict:
    """Peak RSS growth (bytes) of one call in a fresh Python process (see the module
    doc): {"extra": bytes, "grads": bytes of the input gradients left behind,
    "method": ..., "loss": value}. ``shape`` is (N, K) for a loss, (N, D, K) for a
    linear loss (kind="linear")."""
    code = CPU_MEMORY_SCRIPT.format(root=str(ROOT), args=(kind, loss, impl, tuple(shape), dtype_name(dtype), mode))
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # backend "auto" on CPU = the torch path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         env=env, cwd=str(ROOT))
    if out.returncode != 0:
        err = out.stderr.strip().splitlines()
        raise RuntimeError(err[-1] if err else f"exit status {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()


def free(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _recorded(row, device):
    """Run a measurement: an exception goes into ``row["error"]`` ("OOM" for out of
    memory), never raised; afterwards the step's gradients and the cache are freed.
    The body puts its step function in the yielded dict under "run"."""
    state = {}
    try:
        yield state
    except Exception as e:  # noqa: BLE001 - record and go on
        if _is_oom(e):
            row["error"] = "OOM"
        else:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            row["error"] = f"{type(e).__name__}: {msg[:160]}"
    finally:
        if state.get("run") is not None:
            _clear_grads(state["run"])
        state.clear()
        free(device)


def measure(loss, impl, fn, z, t, mode, device, copy_bw, *, memory=True, timing=None, deadline=None) -> dict:
    """One implementation on one case's inputs: median time, effective bandwidth, its
    fraction of the copy bandwidth, and (CUDA, ``memory``) the peak extra memory.
    Errors are recorded in the row ("OOM" for out of memory), never raised."""
    n, k = z.shape
    row = dict(loss=loss, impl=impl, dtype=dtype_name(z.dtype), n=n, k=k, mode=mode)
    with _recorded(row, device) as state:
        if fn == "compile-per-case":
            fn = compiled_fn(loss)
        state["run"] = step(fn, z, t, mode)
        sec, times = time_call(state["run"], device, deadline=deadline, **(timing or {}))
        nbytes = case_bytes(n, k, z.dtype, mode)
        row.update(ms=sec * 1e3, reps=len(times), gbps=nbytes / sec / 1e9, frac_copy=nbytes / sec / copy_bw)
        if memory and device == "cuda":
            row["peak_extra_mib"] = peak_extra_cuda(state["run"]) / 2**20
    return row


# --------------------------------------------------------------------------------------
# Fused linear + loss: loss(hidden @ weight.T, target) without the N x K logits.


def linear_implementations(loss: str, device: str):
    """(impls, skipped) for the linear + loss case, forward+backward w.r.t. hidden and
    weight: ``fused_linear`` (fused_anl.linear_loss), ``unfused`` (the logits
    materialised by a matmul, then the fused loss on them), ``unfused_eager`` (matmul,
    then the eager reference), and for CE Liger's fused linear cross entropy and
    Apple's cut-cross-entropy when importable (CUDA)."""
    impls, skipped = {}, {}
    if not hasattr(fused_anl, "linear_loss"):
        skipped["fused_linear"] = "fused_anl.linear_loss does not exist"
    else:
        impls["fused_linear"] = lambda h, w, t: fused_anl.linear_loss(loss, h, w, t)
    fused_fn = getattr(fused_anl, loss, None)
    if fused_fn is not None:
        impls["unfused"] = lambda h, w, t: fused_fn(h @ w.t(), t)
    ref = getattr(fused_anl.reference, loss, None)
    if ref is not None:
        impls["unfused_eager"] = lambda h, w, t: ref(h @ w.t(), t)
    if loss == "ce":
        if device != "cuda":
            skipped["liger_flce"] = skipped["cce"] = f"needs CUDA (device {device})"
        else:
            try:
                from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
                flce = LigerFusedLinearCrossEntropyLoss()
                impls["liger_flce"] = lambda h, w, t: flce(w, h, t)
            except Exception as e:  # noqa: BLE001
                skipped["liger_flce"] = f"liger_kernel not importable ({type(e).__name__})"
            try:
                from cut_cross_entropy import linear_cross_entropy
                impls["cce"] = lambda h, w, t: linear_cross_entropy(h, w, t)
            except Exception as e:  # noqa: BLE001
                skipped["cce"] = f"cut_cross_entropy not importable ({type(e).__name__})"
    return impls, skipped


def make_linear_inputs(n, d, k, dtype, device, seed=0):
    """hidden (N, D) ~ N(0, 1), weight (K, D) ~ N(0, 1/D), uniform labels."""
    g = torch.Generator(device=device).manual_seed(seed)
    gen_dtype = torch.float32 if device == "cpu" else dtype
    h = torch.randn(n, d, generator=g, device=device, dtype=gen_dtype).to(dtype)
    w = torch.randn(k, d, generator=g, device=device, dtype=gen_dtype).mul_(d ** -0.5).to(dtype)
    t = torch.randint(0, k, (n,), generator=g, device=device)
    return h, w, t


def step_linear(fn, h, w, t):
    """One forward+backward of a linear + loss, gradients of hidden and weight."""
    hh = h.detach().requires_grad_(True)
    ww = w.detach().requires_grad_(True)

    def run():
        hh.grad = ww.grad = None
        loss = fn(hh, ww, t)
        loss.backward()
        return loss
    run.leaves = (hh, ww)
    return run


def measure_linear(loss, impl, fn, h, w, t, device, *, memory=True, timing=None, deadline=None) -> dict:
    """Median time and (CUDA, ``memory``) peak extra memory of one linear + loss
    forward+backward; ``grads_mib`` is the size of the hidden and weight gradients that
    the call leaves behind (included in ``peak_extra_mib``)."""
    (n, d), k = h.shape, w.shape[0]
    row = dict(loss=loss, impl=impl, dtype=dtype_name(h.dtype), n=n, d=d, k=k, mode="fwd+bwd")
    with _recorded(row, device) as state:
        state["run"] = step_linear(fn, h, w, t)
        sec, times = time_call(state["run"], device, deadline=deadline, **(timing or {}))
        row.update(ms=sec * 1e3, reps=len(times))
        row["grads_mib"] = (h.numel() + w.numel()) * h.element_size() / 2**20
        if memory and device == "cuda":
            row["peak_extra_mib"] = peak_extra_cuda(state["run"]) / 2**20
    return row
