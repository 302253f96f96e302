"""Compile the Triton kernels for a CUDA GPU on a machine without one, and report what
the GPU compiler made of them: registers, spills, shared memory, theoretical occupancy
and the width of the global loads.

    python -m benchmarks.kernel_resources [--arch 90] [--quick] [--out DIR] [--json FILE]

Triton's CUDA backend (with the ptxas bundled in the Triton wheel) compiles to a
cubin without a driver; only loading and launching need a GPU. This script installs a
stand-in driver that reports the target GPU, then calls the real launch helpers
(kernels/launch.py) on CPU tensors of each case's shape with the kernels' launches
replaced by ``warmup`` (compile, do not launch). So each case compiles exactly the
specialisations a CUDA run with those shapes would compile (the same constexprs, the
same integer and alignment specialisation of the arguments, the same num_warps).

What it can tell: whether every kernel compiles for the GPU at all (the interpreter
accepts programs the compiler rejects), whether ptxas spills registers to local
memory (LOCAL > 0, a bandwidth kernel's worst enemy), how many blocks fit on an SM,
and whether rows are read with 128-bit loads (LDG.E.128). What it cannot tell: time.
Speed only comes from benchmarks/run.py on a GPU.

Run it with TRITON_INTERPRET unset (the kernels must be real JIT functions).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("kernel_resources: unset TRITON_INTERPRET (it compiles real GPU kernels)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fused_anl import LOSSES  # noqa: E402
from fused_anl.kernels import launch  # noqa: E402
from fused_anl.kernels import scale as _scale  # noqa: E402
from fused_anl.kernels._codes import H_SIZE  # noqa: E402

KERNELS = ("row_loss_kernel", "split_stats1_kernel", "split_stats2_kernel", "split_finish_kernel")
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

# Per-SM limits used for theoretical occupancy (CUDA occupancy calculator rules):
# registers per SM, max warps per SM, max blocks per SM, shared memory per SM (bytes),
# register allocation unit (per warp).
SM = {
    80: dict(regs=65536, warps=64, blocks=32, smem=164 * 1024, reg_unit=256),
    90: dict(regs=65536, warps=64, blocks=32, smem=228 * 1024, reg_unit=256),
}


class _TargetOnlyDriver:
    """Enough of a Triton driver for compilation: it names a target GPU, nothing else."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


class _CompileOnly:
    """Stands in for a kernel in kernels/launch.py: ``k[grid](...)`` compiles, no launch."""

    def __init__(self, fn, sink):
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid):
        def compile_only(*args, **kwargs):
            self.sink.append((self.fn.warmup(*args, grid=grid, **kwargs), kwargs, grid))
        return compile_only


@contextlib.contextmanager
def compiling_for(arch: int):
    """Inside: launch helpers compile for sm_<arch> and append (kernel, kwargs, grid)."""
    compiled: list = []
    saved = {name: getattr(launch, name) for name in KERNELS}
    saved_scale = _scale.scale_kernel
    previous = driver._active  # None until someone asked for the active driver
    driver.set_active(_TargetOnlyDriver(arch))
    for name, fn in saved.items():
        setattr(launch, name, _CompileOnly(fn, compiled))
    _scale.scale_kernel = _CompileOnly(saved_scale, compiled)  # launch.scale_ imports it late
    try:
        yield compiled
    finally:
        for name, fn in saved.items():
            setattr(launch, name, fn)
        _scale.scale_kernel = saved_scale
        driver._active = previous


def _run(tool, *args):
    return subprocess.run([os.path.join(_BIN, tool), *args], capture_output=True, text=True,
                          check=True).stdout


_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)(.*);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def sass_profile(sass: str) -> dict:
    """Static instruction counts of a kernel's SASS (``nvdisasm -c`` text).

    Returns ``instr`` (instructions, NOPs and the trailing ``BRA`` to itself excluded),
    ``mufu`` (MUFU.* by function), ``exit_instr`` (instructions before the first
    ``EXIT``: what a program that returns early issues, counting straight-line code),
    and ``loops``: the innermost loops (a backward branch and the code from its target
    to it), in code order, each with ``instr``, ``mufu``, ``bar`` (barriers), ``ldg`` and
    ``stg`` (global loads/stores). Static counts: every instruction of a loop body is
    taken to issue once per iteration (Triton predicates masks, so bodies are straight
    lines apart from the loop branch). A loop that only stores (the zero gradient of
    an ignored row, run instead of the gradient loop) is listed in ``zero_store_loops``
    and counted nowhere else (``instr`` excludes it).
    """
    ops, labels = [], {}
    for line in sass.splitlines():
        m = _LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = len(ops)
            continue
        m = _INSTR.match(line)
        if m:
            ops.append((m.group(2), m.group(3)))
    # drop the trailing self-branch and padding NOPs
    while ops and (ops[-1][0] == "NOP" or (ops[-1][0] == "BRA" and "EXIT" not in ops[-1][1]
                                            and _TARGET.search(ops[-1][1])
                                            and labels.get(_TARGET.search(ops[-1][1]).group(1))
                                            == len(ops) - 1)):
        ops.pop()
    spans = []
    for i, (op, rest) in enumerate(ops):
        t = _TARGET.search(rest) if op == "BRA" else None
        if t and t.group(1) in labels and labels[t.group(1)] <= i:
            spans.append((labels[t.group(1)], i))
    inner = [a for a in spans if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in spans)]

    def count(lo, hi):
        sel = [op for op, _ in ops[lo:hi + 1] if op != "NOP"]
        return dict(instr=len(sel),
                    mufu=dict(collections.Counter(o for o in sel if o.startswith("MUFU"))),
                    bar=sum(o.startswith("BAR") for o in sel),
                    ldg=sum(o.startswith("LDG") for o in sel),
                    stg=sum(o.startswith("STG") for o in sel))

    first_exit = next((i for i, (op, _) in enumerate(ops) if op == "EXIT"), len(ops))
    whole = count(0, len(ops) - 1)
    loops = [count(lo, hi) for lo, hi in sorted(inner)]
    # A loop that stores without loading or computing anything (no MUFU) is the zero
    # gradient of an ignored row (kernels/row_loss.py _chunk_grad), run instead of the
    # gradient loop: left out of the passes and of the instructions a valid row issues.
    zero = [lp for lp in loops if lp["stg"] and not lp["ldg"] and not lp["mufu"]]
    return dict(instr=whole["instr"] - sum(lp["instr"] for lp in zero), mufu=whole["mufu"],
                exit_instr=count(0, first_exit)["instr"],
                loops=[lp for lp in loops if lp not in zero],
                zero_store_loops=[lp["instr"] for lp in zero])


_PTXAS_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                            "fused_anl", "ptxas-v")


def ptxas_report(kernel, arch: int) -> dict:
    """Registers, stack frame and spill store/load bytes from ``ptxas -v`` on the kernel's
    PTX, with the flags Triton's CUDA backend uses (its log is not kept, so ptxas runs
    again; cached by the kernel's hash). These are the spills: ptxas puts them in the
    stack frame, and cuobjdump's ``LOCAL`` then stays 0."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    key = os.path.join(_PTXAS_CACHE, f"{kernel.metadata.hash}-sm{arch}.txt")
    if os.path.exists(key):
        with open(key) as f:
            log = f.read()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "k.ptx")
            with open(src, "w") as f:
                f.write(kernel.asm["ptx"])
            ptxas = get_ptxas(arch) if inspect.signature(get_ptxas).parameters else get_ptxas()
            cmd = [ptxas.path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                   f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o",
                   os.path.join(tmp, "k.o")]
            if not kernel.metadata.enable_fp_fusion:
                cmd.insert(1, "--fmad=false")
            log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
        os.makedirs(_PTXAS_CACHE, exist_ok=True)
        with open(key, "w") as f:
            f.write(log)
    st = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                   log)
    regs = re.search(r"Used (\d+) registers", log)
    return dict(ptxas_regs=int(regs.group(1)), ptxas_stack=int(st.group(1)),
                spill_store_bytes=int(st.group(2)), spill_load_bytes=int(st.group(3)))


def resources(kernel, arch: int, profile=False) -> dict:
    """Registers, spills, shared memory, occupancy and load/store widths; ``profile``:
    also the SASS profile (``sass_profile``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = _run("cuobjdump", "-res-usage", path)
        sass = _run("nvdisasm", "-c", path)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    regs, stack, shared_static, local = (int(x) for x in m.groups())
    warps = kernel.metadata.num_warps
    smem = shared_static + kernel.metadata.shared
    ops = collections.Counter(re.findall(r"\b((?:LDG|STG|LDL|STL)[.A-Z0-9]*)", sass))
    lim = SM[arch]
    regs_per_warp = -(-regs * 32 // lim["reg_unit"]) * lim["reg_unit"]
    blocks = min(lim["blocks"], lim["warps"] // warps, (lim["regs"] // regs_per_warp) // warps,
                 lim["smem"] // max(smem + 1024, 1))
    px = ptxas_report(kernel, arch)
    out = dict(
        kernel=kernel.name, num_warps=warps, regs=regs, local_bytes=local, stack_bytes=stack,
        spill_bytes=px["spill_store_bytes"], spill_load_bytes=px["spill_load_bytes"],
        ptxas_regs=px["ptxas_regs"],
        shared_bytes=smem, blocks_per_sm=blocks, occupancy=blocks * warps / lim["warps"],
        spill_instr=sum(v for k, v in ops.items() if k.startswith(("LDL", "STL"))),
        ldg128=sum(v for k, v in ops.items() if k.startswith("LDG") and k.endswith(".128")),
        ldg=sum(v for k, v in ops.items() if k.startswith("LDG")),
        stg128=sum(v for k, v in ops.items() if k.startswith("STG") and k.endswith(".128")),
    )
    if profile:
        out["sass"] = sass_profile(sass)
    return out


def _hyper(dtype):
    return torch.zeros(H_SIZE, dtype=torch.float64 if dtype == torch.float64 else torch.float32)


def compile_case(loss: str, dtype, rows: int, k: int, *, grad=True, arch=90, weight=False,
                 exact=False, sharded=False, d=1, config=None, profile=False, softcap=False,
                 lse=False, z_loss=False) -> list[dict]:
    """Compile what one call of the loss on (rows, k) logits of ``dtype`` launches
    (``config``: LaunchConfig overrides; ``loss`` may be a variant such as ``ce:ls``, CE
    with label smoothing; ``softcap``/``lse``: the logit soft cap and the lse output)."""
    from fused_anl._registry import spec_of
    spec = spec_of(loss)
    z3 = torch.empty((rows, k, d), dtype=dtype)
    t = torch.zeros(rows * d, dtype=torch.int64)
    h = _hyper(dtype)
    cd = h.dtype
    kw = dict(active=spec.active, passive=spec.passive, exact=exact)
    with compiling_for(arch) as compiled, launch.config(**(config or {})):
        if sharded:
            launch.shard_stats1(z3)
            parts1 = torch.empty((rows * d, 2, 4), dtype=cd)  # two ranks
            launch.shard_stats2(z3, t, h, parts1, **kw)
            launch.shard_finish(z3, t, torch.ones(rows * d, dtype=cd),
                                torch.zeros(rows * d, dtype=cd), h, torch.ones(1, dtype=cd), parts1,
                                torch.empty((rows * d, 2, 5), dtype=cd), ignore_index=-100,
                                compute_grad=grad, **kw)
        else:
            launch.row_loss(z3, t, torch.ones(k, dtype=cd) if weight else None, h,
                            torch.ones(1, dtype=cd), ignore_index=-100, compute_grad=grad,
                            softcap=softcap, z_loss=z_loss,
                            lse_out=torch.empty(rows * d, dtype=cd) if lse else None, **kw)
    out = []
    for kernel, kwargs, grid in compiled:
        r = resources(kernel, arch, profile)
        r.update(loss=loss, dtype=str(dtype).replace("torch.", ""), rows=rows, K=k, grad=grad,
                 path=_path(kernel.name, kwargs, sharded), block_k=kwargs.get("BLOCK_K"),
                 arch=f"sm_{arch}")
        out.append(r)
    return out


def _path(name, kwargs, sharded):
    if sharded:
        return "shard"
    if name == "row_loss_kernel":
        if kwargs.get("SINGLE"):
            return "single"
        return "persistent" if kwargs.get("PERSISTENT") else "stream"
    return "split"


def cases(quick: bool):
    """(loss, dtype, rows, K, options). The full set: every loss, bf16 and fp32, on each
    path at its largest block; --quick: every loss once per path, the rest on ANL-CE;
    both: the launch policy's compact-row entries in bf16."""
    c = launch.get_config()
    single_k = c.max_single_k  # the largest single block: the most registers
    split = (c.split_max_rows, 8 * c.split_chunk)
    losses = list(LOSSES)
    dtypes = (torch.bfloat16, torch.float32)
    out = []
    for loss in losses:
        for dt in (dtypes[1:] if quick else dtypes):
            out.append((loss, dt, 4096, single_k, {}))
            out.append((loss, dt, 4096, 4 * c.block_k, {}))
            if not quick or loss in ("ce", "anl_ce", "anl_fl", "nce_rce"):
                out.append((loss, dt, *split, {}))
    # the launch policy's entries for compact rows (2-byte logits: ELEMS_PER_THREAD,
    # REGISTER_CAP), bf16 on their path, --quick too
    from fused_anl._registry import spec_of
    compact = {(key[0], key[1]) for key in (*launch.ELEMS_PER_THREAD, *launch.REGISTER_CAP)
               if key[2:] == (launch.COMPACT,)}
    for loss in losses:
        spec = spec_of(loss)
        for path, codes in sorted(compact):
            if codes == (spec.active, spec.passive):
                out.append((loss, torch.bfloat16, 4096,
                            single_k if path == "single" else 4 * c.block_k, {}))
                if path == "blocks":  # and on a persistent grid (1 "SM" here: 2 programs)
                    out.append((loss, torch.bfloat16, 4096, 4 * c.block_k,
                                dict(config=dict(programs_per_sm=2))))
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        out.append(("anl_ce", dt, 4096, 1000, {}))  # K = 1000: rows 16-byte aligned, block 1024
        out.append(("anl_ce", dt, 4096, 1001, {}))  # odd K: rows are not
        out.append(("anl_ce", dt, 4096, 32000, dict(grad=False)))  # forward only
    out.append(("anl_fl", torch.float32, 4096, single_k, dict(exact=True, weight=True)))
    out.append(("anl_ce", torch.bfloat16, 4096, 4 * c.block_k, dict(sharded=True)))
    for loss in ("anl_ce", "ce"):  # streaming on a persistent grid (1 "SM" here: 2 programs)
        out.append((loss, torch.bfloat16, 4096, 4 * c.block_k,
                    dict(config=dict(programs_per_sm=2))))
    out.append(("anl_ce", torch.float64, 64, 4 * c.block_k, {}))  # gradcheck dtype: compiles
    # the options: CE with label smoothing and the z-loss, and the soft cap with the lse
    # output, on every path
    # (--quick: CE with label smoothing on one block and split rows, ANL-CE capped on all)
    for loss, opt in (("ce:ls", dict(z_loss=True)),
                      ("anl_ce", dict(softcap=True, lse=True, z_loss=True)),
                      ("ce", dict(softcap=True, lse=True))):
        if quick and loss == "ce":
            continue
        for dt in (torch.bfloat16,) if quick else (torch.bfloat16, torch.float32):
            out.append((loss, dt, 4096, single_k, opt))
            if not quick or loss != "ce:ls":
                out.append((loss, dt, 4096, 4 * c.block_k, opt))
            out.append((loss, dt, *split, opt))
    return out


def run(arch=90, quick=False, progress=True):
    rows = []
    todo = cases(quick)
    for i, (loss, dt, n, k, opt) in enumerate(todo):
        rows += compile_case(loss, dt, n, k, arch=arch, **opt)
        if progress:
            print(f"\r[{i + 1}/{len(todo)}] {loss} {dt} K={k}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return rows


COLUMNS = ("arch", "loss", "dtype", "K", "grad", "path", "kernel", "block_k", "num_warps", "regs",
           "spill_bytes", "stack_bytes", "shared_bytes", "blocks_per_sm", "occupancy", "ldg128", "ldg")


def table(rows) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = ""
    for r in rows:
        body += "| " + " | ".join(f"{r[c]:.2f}" if c == "occupancy" else str(r[c])
                                  for c in COLUMNS) + " |\n"
    return head + body


def summary(rows) -> str:
    spilled = [r for r in rows if (r["spill_bytes"] or r["spill_instr"]) and r["dtype"] != "float64"]
    worst = max(rows, key=lambda r: r["regs"])
    return (f"{len(rows)} kernels compiled for {rows[0]['arch']}; "
            f"{len(spilled)} spill registers (bf16/fp16/fp32); "
            f"most registers: {worst['regs']} ({worst['loss']} {worst['dtype']} {worst['path']} "
            f"block {worst['block_k']}, {worst['num_warps']} warps); "
            f"lowest occupancy: {min(r['occupancy'] for r in rows):.2f}")


def warps_sweep(arch=90, losses=("ce", "anl_ce", "anl_fl", "nfl_rce"), epts=(8, 16, 32)):
    """Registers and occupancy of the single path (K = 2048..8192) and the streaming path
    (block 2048..8192) for several elements per thread (LaunchConfig.elems_per_thread)."""
    rows = []
    for loss, dt, ept in itertools.product(losses, (torch.bfloat16, torch.float32), epts):
        for k, over in [(k, {}) for k in (2048, 4096, 8192)] + [
                (32768, dict(block_k=b, max_single_k=1024)) for b in (2048, 4096, 8192)]:
            for r in compile_case(loss, dt, 4096, k, arch=arch,
                                  config=dict(elems_per_thread=ept, max_warps=32, **over)):
                rows.append(dict(r, elems_per_thread=ept))
    return rows


def warps_table(rows) -> str:
    cells = {}
    for r in rows:
        if r["kernel"] == "row_loss_kernel":
            cells.setdefault((r["loss"], r["dtype"], r["path"], r["block_k"]), {})[
                r["elems_per_thread"]] = f"{r['num_warps']}w {r['regs']}r {r['occupancy']:.2f}"
    epts = sorted({r["elems_per_thread"] for r in rows})
    out = ("| loss | dtype | path | block | " + " | ".join(f"{e} per thread" for e in epts)
           + " |\n|" + "---|" * (4 + len(epts)) + "\n")
    for (loss, dt, path, block), v in cells.items():
        out += (f"| {loss} | {dt} | {path} | {block} | "
                + " | ".join(v.get(e, "") for e in epts) + " |\n")
    return out


# ---------------------------------------------------------------- static roofline

# The GPU the estimate is for (H100 SXM, sm_90): SMs, L2, DRAM bandwidth, boost clock.
# Issue rate: each SM's 4 schedulers issue one warp-instruction per cycle; a
# warp-instruction is counted as 32 thread-instructions (predicated-off lanes included).
H100 = dict(name="H100 SXM", sms=132, l2_bytes=50 * 2**20, dram_bytes_per_s=3.0e12,
            clock_hz=1.755e9, schedulers=4, lanes=32)
ROOFLINE_LOSSES = ("ce", "anl_ce", "anl_fl", "nce_rce")
# (N, K): the three issue-11 shapes (N = 16384) and few long rows (the split-row path)
ROOFLINE_SHAPES = ((16384, 8192), (16384, 32768), (16384, 128256), (256, 262144))
# Issue 11's targets: SASS thread-instructions per logit (fwd + bwd), bytes per logit
INSTR_TARGETS = dict(anl_ce=35, nce_rce=45, ce=25, anl_fl=90)
BYTES_TARGETS = {8192: 4.0, 32768: 4.0, 128256: 4.5}


def issue_rate(dev=H100) -> float:
    """Thread-instructions per second the whole GPU can issue."""
    return dev["sms"] * dev["schedulers"] * dev["clock_hz"] * dev["lanes"]


def _per_elem(r, cols: int, key: str = "instr"):
    """Thread-instructions (or, key="mufu", a Counter of MUFU ops) per element for a
    program of kernel row ``r`` covering ``cols`` elements: loop bodies times their
    iterations plus the straight-line rest, times 32 x warps. With 2-byte logits every
    pass of the row kernels takes its first block (the leftover columns, or a whole
    block) before its loop, as straight-line code (kernels/row_loss.py
    ``_first_block_end``): the rest counts it once, and the loops run the other
    ceil(cols / block) - 1 blocks; otherwise the loops run ceil(cols / block) times."""
    p = r["sass"]
    peeled = r.get("dtype") in ("bfloat16", "float16") and r.get("path") != "backward"
    iters = max(0, -(-cols // r["block_k"]) - peeled) if p["loops"] else 0
    threads = 32 * r["num_warps"]
    if key == "instr":
        rest = p["instr"] - sum(lp["instr"] for lp in p["loops"])
        return threads * (rest + iters * sum(lp["instr"] for lp in p["loops"])) / cols
    out = collections.Counter()
    for op, v in p["mufu"].items():
        in_loops = sum(lp["mufu"].get(op, 0) for lp in p["loops"])
        out[op] += threads * (v - in_loops + iters * in_loops) / cols
    return out


def model(fwd: list[dict], bwd: dict, n: int, k: int, *, elem_bytes=2, grad_bytes=2,
          dev=H100) -> dict:
    """Modeled DRAM bytes, thread-instructions and an estimated time for forward+backward
    of one loss on (n, k) logits, from the compiled kernels of forward (``fwd``, with SASS
    profiles) and of the backward scale kernel (``bwd``: {"scalar": row} with its BLOCK).

    Passes are read from the SASS: a program without loops reads its row once (and writes
    the gradient once); otherwise every loop with a global load is a read pass and every
    loop with a global store a write pass. Re-reads (read passes after the first) come
    from DRAM in the fraction the L2 cannot hold: for one program per row the bytes in
    flight are (programs resident = SMs x blocks per SM, at most n) x row bytes; for
    split rows, whose passes are separate launches, the whole tensor. Fraction from DRAM
    = max(0, 1 - L2 / bytes in flight). Per-row traffic (label, loss: 12 bytes, under
    0.002 bytes per logit here) is left out. Backward with grad_output == 1: no N x K bytes, each program
    issues the straight-line code to its EXIT; another scalar: one read and one write.
    """
    split = any(r["path"] in ("split", "shard") for r in fwd)
    pl = launch.plan(n, k, sms=dev["sms"], l2=dev["l2_bytes"], elem_bytes=elem_bytes)
    cols = pl.chunk if split else k
    instr = sum(_per_elem(r, cols) for r in fwd)
    mufu = collections.Counter()
    for r in fwd:
        mufu.update(_per_elem(r, cols, "mufu"))
    reads = writes = 0
    for r in fwd:
        loops = r["sass"]["loops"]
        if loops:
            reads += sum(lp["ldg"] > 0 for lp in loops)
            writes += sum(lp["stg"] > 0 for lp in loops)
        else:
            reads += 1
            writes += 1 if r["grad"] else 0
    # a persistent grid (launch.stream_grid) streams at most its programs' rows at once
    resident = min(n * (pl.chunks if split else 1), pl.grid or n,
                   dev["sms"] * min(r["blocks_per_sm"] for r in fwd))
    in_flight = (n * k if split else resident * k) * elem_bytes
    dram_frac = max(0.0, 1.0 - dev["l2_bytes"] / in_flight)
    rereads = max(reads - 1, 0)
    fwd_bytes = elem_bytes * (1 + rereads * dram_frac) + grad_bytes * writes
    s = bwd["scalar"]
    threads = 32 * s["num_warps"]
    numel = n * k
    # the backward kernel's grid (kernels/launch.py scale_grid): programs that each exit
    # (grad_output == 1) or walk their blocks grid-stride (one loop iteration per block)
    programs = launch.scale_grid(numel, dev["sms"])
    bwd1_instr = threads * s["sass"]["exit_instr"] * programs / numel
    loop = sum(lp["instr"] for lp in s["sass"]["loops"])
    bwdx_instr = threads * (loop / s["block"] + (s["sass"]["instr"] - loop) * programs / numel)
    floor_s = 4 * numel / dev["dram_bytes_per_s"]  # bf16: one read and one write

    def est(bytes_, instr_):
        t_mem = bytes_ * numel / dev["dram_bytes_per_s"]
        t_issue = instr_ * numel / issue_rate(dev)
        t = max(t_mem, t_issue)
        return dict(bytes_per_elem=bytes_, instr_per_elem=instr_, est_ms=1e3 * t,
                    bound="memory" if t_mem >= t_issue else "issue",
                    pct_of_floor=100 * floor_s / t)

    return dict(
        N=n, K=k, path=fwd[0]["path"], kernels=[r["kernel"] for r in fwd],
        read_passes=reads, write_passes=writes, programs_resident=resident,
        in_flight_mib=in_flight / 2**20, reread_dram_fraction=dram_frac,
        fwd_instr_per_elem=instr, mufu_per_elem=dict(mufu), mufu_total=sum(mufu.values()),
        fwd_bytes_per_elem=fwd_bytes, bytes_if_rereads_miss=elem_bytes * reads + grad_bytes * writes,
        bwd_go1_instr_per_elem=bwd1_instr,
        bwd_other_instr_per_elem=bwdx_instr,
        go1=est(fwd_bytes, instr + bwd1_instr),
        go_other=est(fwd_bytes + 2 * grad_bytes, instr + bwdx_instr),
        regs=max(r["regs"] for r in fwd), spill_bytes=sum(r["spill_bytes"] for r in fwd),
        spill_instr=sum(r["spill_instr"] for r in fwd),
        occupancy=min(r["occupancy"] for r in fwd), floor_ms=1e3 * floor_s)


def compile_scale(dtype=torch.bfloat16, n=16384, k=32768, arch=90) -> dict:
    """The backward kernel (kernels/scale.py) as launch.scale_ compiles it: scalar
    grad_output and one per sample; {"scalar": row, "per_row": row} with SASS profiles."""
    out = {}
    for name, go in (("scalar", torch.ones(1)), ("per_row", torch.ones(n))):
        with compiling_for(arch) as compiled:
            launch.scale_(torch.empty((n, k, 1), dtype=dtype), go)
        ((kernel, kwargs, grid),) = compiled
        r = resources(kernel, arch, profile=True)
        r.update(block=kwargs.get("BLOCK", 4096), path="backward", loss="*", K=k,
                 dtype=str(dtype).replace("torch.", ""), arch=f"sm_{arch}")
        out[name] = r
    return out


def roofline(arch=90, losses=ROOFLINE_LOSSES, shapes=ROOFLINE_SHAPES, progress=True) -> dict:
    """Compile every (loss, shape) at bf16 with SASS profiles and model each."""
    bwd = compile_scale(arch=arch)
    kernels, cases_ = [], []
    for i, (loss, (n, k)) in enumerate(itertools.product(losses, shapes)):
        if progress:
            print(f"\r[{i + 1}/{len(losses) * len(shapes)}] {loss} N={n} K={k}   ", end="",
                  file=sys.stderr, flush=True)
        # planned for the modeled device (its SMs and L2: the persistent streaming grid)
        rows = compile_case(loss, torch.bfloat16, n, k, arch=arch, profile=True,
                            config=dict(sms=H100["sms"], l2_bytes=H100["l2_bytes"]))
        kernels += [dict(r, N=n) for r in rows]
        cases_.append(dict(model(rows, bwd, n, k), loss=loss))
    if progress:
        print(file=sys.stderr)
    return dict(device=H100, arch=f"sm_{arch}", triton=triton.__version__,
                config=str(launch.get_config()), date=str(datetime.date.today()),
                cases=cases_, kernels=kernels, backward=bwd, checks=targets(cases_, kernels, bwd))


def targets(cases_, kernels, bwd) -> list[dict]:
    """Issue 11's static targets, each PASS or MISS with its figure."""
    out = []
    for c in cases_:
        if c["loss"] == "anl_ce" and c["N"] == 16384 and c["K"] in BYTES_TARGETS:
            lim = BYTES_TARGETS[c["K"]]
            v = c["go1"]["bytes_per_elem"]
            out.append(dict(target=f"ANL-CE fwd+bwd bytes/elem, K={c['K']} ({c['path']})",
                            limit=f"<= {lim}", value=round(v, 2), ok=v <= lim))
        if c["loss"] in INSTR_TARGETS and c["N"] == 16384:
            lim = INSTR_TARGETS[c["loss"]]
            v = c["go1"]["instr_per_elem"]
            out.append(dict(target=f"{c['loss']} SASS instr/elem, K={c['K']} ({c['path']})",
                            limit=f"<= {lim}", value=round(v, 1), ok=v <= lim))
    allk = kernels + list(bwd.values())
    spilled = [f"{r['loss']} {r['path']} {r['kernel']} K={r['K']}: {r['spill_bytes']} B"
               for r in allk if r["spill_bytes"] or r["spill_instr"]]
    out.append(dict(target="no spills (every kernel compiled here)", limit="0 bytes",
                    value="; ".join(spilled) or 0, ok=not spilled))
    return out


def roofline_md(res: dict) -> str:
    dev = res["device"]
    head = (f"# Static roofline, {res['arch']} ({res['date']}, triton {res['triton']})\n\n"
            f"**Estimates, not measurements**: compiled for sm_90 without a GPU; the times "
            f"below are a model for an {dev['name']}, no kernel ran. Command: "
            f"`{res.get('command', 'python -m benchmarks.kernel_resources --roofline')}`."
            f"\n\nLaunchConfig: "
            f"{res['config']}\n\n")
    t = ("## Summary (bf16 logits, forward+backward, `loss.backward()` i.e. grad_output == 1)"
         "\n\n| loss | N | K | path | regs | spill B | occupancy | SASS instr/elem | "
         "MUFU/elem | read passes | bytes/elem | bytes/elem, every re-read from DRAM | "
         "est. time ms | bound | % of 4-byte floor | bytes/elem, grad_output != 1 | "
         "est. ms, != 1 |\n|" + "---|" * 17 + "\n")
    for c in res["cases"]:
        g, x = c["go1"], c["go_other"]
        t += (f"| {c['loss']} | {c['N']} | {c['K']} | {c['path']} | {c['regs']} | "
              f"{c['spill_bytes']} | {c['occupancy']:.2f} | {g['instr_per_elem']:.1f} | "
              f"{c['mufu_total']:.2f} | {c['read_passes']} | {g['bytes_per_elem']:.2f} | "
              f"{c['bytes_if_rereads_miss']:.2f} | {g['est_ms']:.3f} | "
              f"{g['bound']} | {g['pct_of_floor']:.0f}% | {x['bytes_per_elem']:.2f} | "
              f"{x['est_ms']:.3f} |\n")
    chk = ("\n## Issue 11 targets\n\nA bytes PASS with more than one read pass rests "
           "on the L2 model (re-reads assumed to hit while the rows in flight fit in L2); "
           "the column 'every re-read from DRAM' is the other end of the range.\n\n"
           "| target | limit | value | result |\n|---|---|---|---|\n")
    for c in res["checks"]:
        chk += f"| {c['target']} | {c['limit']} | {c['value']} | {'PASS' if c['ok'] else 'MISS'} |\n"
    passes = ("\n## Passes and traffic per case\n\n| loss | N | K | path | read passes | "
              "write passes | programs resident | bytes in flight MiB | re-reads from DRAM | "
              "fwd instr/elem | bwd instr/elem (go=1 / other) | MUFU/elem by op |\n|"
              + "---|" * 12 + "\n")
    for c in res["cases"]:
        mu = ", ".join(f"{k.replace('MUFU.', '')} {v:.2f}" for k, v in sorted(c["mufu_per_elem"].items()))
        passes += (f"| {c['loss']} | {c['N']} | {c['K']} | {c['path']} | {c['read_passes']} | "
                   f"{c['write_passes']} | {c['programs_resident']} | {c['in_flight_mib']:.0f} | "
                   f"{100 * c['reread_dram_fraction']:.0f}% | {c['fwd_instr_per_elem']:.1f} | "
                   f"{c['bwd_go1_instr_per_elem']:.3f} / {c['bwd_other_instr_per_elem']:.1f} | "
                   f"{mu} |\n")
    kt = ("\n## Kernels\n\nSASS instructions per pass: the innermost loops in code order "
          "(instructions, barriers), then the straight-line rest.\n\n| loss | N | K | path | "
          "kernel | warps | block | regs | spill B | stack B | blocks/SM | occupancy | "
          "loops (instr/bar) | rest |\n|" + "---|" * 14 + "\n")
    seen = set()
    for r in res["kernels"] + list(res["backward"].values()):
        key = (r["loss"], r["path"], r["kernel"], r.get("N"), r["K"])
        if key in seen:
            continue
        seen.add(key)
        p = r["sass"]
        loops = " + ".join(f"{lp['instr']}/{lp['bar']}" for lp in p["loops"]) or "-"
        rest = p["instr"] - sum(lp["instr"] for lp in p["loops"])
        kt += (f"| {r['loss']} | {r.get('N', '')} | {r['K']} | {r['path']} | {r['kernel']} | "
               f"{r['num_warps']} | {r.get('block_k') or r.get('block')} | {r['regs']} | "
               f"{r['spill_bytes']} | {r['stack_bytes']} | {r['blocks_per_sm']} | "
               f"{r['occupancy']:.2f} | {loops} | {rest} |\n")
    rate = issue_rate(dev)
    assume = f"""
## Assumptions (the model, stated so it can be argued with)

- Device: {dev['name']}: {dev['sms']} SMs, L2 {dev['l2_bytes'] / 2**20:.0f} MiB, DRAM
  {dev['dram_bytes_per_s'] / 1e12:.1f} TB/s, {dev['clock_hz'] / 1e9:.3f} GHz; issue rate
  {dev['sms']} SMs x {dev['schedulers']} schedulers x 1 warp-instruction/cycle x
  {dev['lanes']} lanes = {rate / 1e12:.1f} T thread-instructions/s. At 4 bytes per element
  the issue budget is {rate * 4 / dev['dram_bytes_per_s']:.1f} thread-instructions per element.
- Estimated time = max(bytes / DRAM bandwidth, thread-instructions / issue rate): no
  latency, no tail effects, no launch overhead, perfect overlap. It is a bound-style
  estimate, not a prediction.
- SASS instructions per element: static counts from `nvdisasm -c`. Each innermost loop
  (a backward branch) is a pass; its body issues once per iteration, ceil(columns /
  block) iterations, one fewer for 2-byte logits, whose passes take their first block
  before the loop (straight-line code, in the rest); the rest of the kernel once per
  program (per row); no latency or pipelining is modeled; all times 32 x warps,
  divided by the columns a program covers (K, or the chunk for split rows). Predicated
  code counts as issued. The single-block path: the whole kernel / K. A loop that only
  stores (the zero gradient of an ignored row, run instead of the gradient loop) is not
  counted.
- MUFU per element: the same count restricted to MUFU.* (EX2, LG2, RCP, ...).
- Bytes per element: logits 2 bytes (bf16) per read pass, gradient 2 bytes per write
  pass; the first read from DRAM; re-reads from DRAM in the fraction max(0, 1 - L2 /
  bytes in flight), bytes in flight = programs resident (SMs x blocks per SM from the
  occupancy, at most N, at most the persistent grid of kernels/launch.py stream_grid)
  x row bytes, or for split rows (separate launches) the whole
  tensor. Not counted: the gradient writes' own L2 footprint, the stats partials of
  split rows, label + loss (12 bytes per row: under 0.002 bytes per logit here).
- Backward: `fused_anl/_ops.py` scale_grad and kernels/scale.py. grad_output == 1 (the
  summary): no N x K traffic; every program still issues the code before its EXIT
  (counted). Its grid is kernels/launch.py scale_grid (8 programs per SM, grid-stride
  over blocks): the launch itself is not modeled. Another scalar: one read and one
  write of the gradient (the columns "!= 1").
- The 4-byte floor: one bf16 read and one bf16 write per logit at DRAM bandwidth.
"""
    return head + t + chk + passes + kt + assume


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=sorted(SM))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="folder for resources.md / resources.json")
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--warps-sweep", action="store_true",
                    help="instead: registers/occupancy per elems_per_thread (warps-sm<arch>.md)")
    ap.add_argument("--roofline", action="store_true",
                    help="instead: the static roofline (roofline.{md,json}; default folder "
                         "benchmarks/results/static-sm<arch>-<date>/)")
    ap.add_argument("--all-losses", action="store_true",
                    help="--roofline: every registered loss, not only " + ", ".join(ROOFLINE_LOSSES))
    a = ap.parse_args(argv)
    if a.roofline:
        res = roofline(a.arch, tuple(LOSSES) if a.all_losses else ROOFLINE_LOSSES)
        res["command"] = ("python -m benchmarks.kernel_resources --roofline"
                          + (" --all-losses" if a.all_losses else ""))
        out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                    f"static-sm{a.arch}-{datetime.date.today()}")
        os.makedirs(out, exist_ok=True)
        text = roofline_md(res)
        with open(os.path.join(out, "roofline.md"), "w") as f:
            f.write(text)
        with open(a.json or os.path.join(out, "roofline.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(text.split("\n## Passes")[0])
        return
    if a.warps_sweep:
        text = (f"# Warps per block, sm_{a.arch} ({datetime.date.today()}, "
                f"triton {triton.__version__})"
                "\n\nEach cell: num_warps, registers per thread, theoretical occupancy.\n\n"
                + warps_table(warps_sweep(a.arch)))
        print(text)
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, f"warps-sm{a.arch}.md"), "w") as f:
                f.write(text)
        return
    rows = run(a.arch, a.quick)
    text = (f"# Kernel resources, sm_{a.arch} ({datetime.date.today()}, "
            f"triton {triton.__version__})\n\n")
    text += f"LaunchConfig: {launch.get_config()}\n\n{summary(rows)}\n\n{table(rows)}"
    print(summary(rows))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, f"resources-sm{a.arch}.md"), "w") as f:
            f.write(text)
    if a.out or a.json:
        path = a.json or os.path.join(a.out, f"resources-sm{a.arch}.json")
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
