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
    previous = driver._active  # None until someone asked for the active driver
    driver.set_active(_TargetOnlyDriver(arch))
    for name, fn in saved.items():
        setattr(launch, name, _CompileOnly(fn, compiled))
    try:
        yield compiled
    finally:
        for name, fn in saved.items():
            setattr(launch, name, fn)
        driver._active = previous


def _run(tool, *args):
    return subprocess.run([os.path.join(_BIN, tool), *args], capture_output=True, text=True,
                          check=True).stdout


def resources(kernel, arch: int) -> dict:
    """Registers, local memory (spills), shared memory, occupancy and load/store widths."""
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
    return dict(
        kernel=kernel.name, num_warps=warps, regs=regs, local_bytes=local, stack_bytes=stack,
        shared_bytes=smem, blocks_per_sm=blocks, occupancy=blocks * warps / lim["warps"],
        spill_instr=sum(v for k, v in ops.items() if k.startswith(("LDL", "STL"))),
        ldg128=sum(v for k, v in ops.items() if k.startswith("LDG") and k.endswith(".128")),
        ldg=sum(v for k, v in ops.items() if k.startswith("LDG")),
        stg128=sum(v for k, v in ops.items() if k.startswith("STG") and k.endswith(".128")),
    )


def _hyper(dtype):
    return torch.zeros(H_SIZE, dtype=torch.float64 if dtype == torch.float64 else torch.float32)


def compile_case(loss: str, dtype, rows: int, k: int, *, grad=True, arch=90, weight=False,
                 exact=False, sharded=False, d=1, config=None) -> list[dict]:
    """Compile what one call of the loss on (rows, k) logits of ``dtype`` launches
    (``config``: LaunchConfig overrides)."""
    spec = LOSSES[loss]
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
                            torch.ones(1, dtype=cd), ignore_index=-100, compute_grad=grad, **kw)
    out = []
    for kernel, kwargs, grid in compiled:
        r = resources(kernel, arch)
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
    path at its largest block; --quick: every loss once per path, the rest on ANL-CE."""
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
           "local_bytes", "shared_bytes", "blocks_per_sm", "occupancy", "ldg128", "ldg")


def table(rows) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = ""
    for r in rows:
        body += "| " + " | ".join(f"{r[c]:.2f}" if c == "occupancy" else str(r[c])
                                  for c in COLUMNS) + " |\n"
    return head + body


def summary(rows) -> str:
    spilled = [r for r in rows if r["local_bytes"] and r["dtype"] != "float64"]
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=sorted(SM))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="folder for resources.md / resources.json")
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--warps-sweep", action="store_true",
                    help="instead: registers/occupancy per elems_per_thread (warps-sm<arch>.md)")
    a = ap.parse_args(argv)
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
