"""Fused elementwise kernels as vectorized loop nests (used by compiler/lower.py).

One internal function per kernel: `void f(ptr ref_0, ..., ptr ref_n, i64 nrows)` where the
pointers already point at each Ref's window (slot and first column applied by the caller) and
nrows is the iteration space's row count (a runtime value because "all" views span T slots).
Column counts and row strides are compile-time constants, so the column loop is a counted loop of
full vectors (16 x f32 or 8 x f64) plus one tail with a constant lane mask. Copy and Fill reuse
this path as one-row-body kernels.
"""
from __future__ import annotations

from llvmlite import ir

from compiler.emitter import LLVMEmitter, llvm_float, lower_op
from compiler.llvmlib.vecmath import prefetch
from compiler.llvmlib.vecops import I1, I64, PTR, VecOps, loop
from compiler.schedule import Copy, Fill, Fused, fused_domain, ref_window

# Each kernel row prefetches the same columns of the next row of every full input and output.
# The saved per-step windows were written long ago (out of L2) and the rows of a gate window sit a
# whole (B, 4H) row apart, which the hardware prefetchers follow late: measured 8-14% off the LSTM
# and GRU training step at (32, 64..256, 128..256, 100), no change at the larger sizes. Kernels of
# one row per slot (B = 1) would only fetch the next step's slot, so they do not prefetch.
PF_ROWS = 1
_IDENTITY = {"sum": 0.0, "max": float("-inf")}


def as_fused(k) -> Fused:
    if isinstance(k, Copy):
        return Fused("copy", ((k.src, "full"),), (), (("in0", k.out),))
    if isinstance(k, Fill):
        return Fused("fill", (), (), ((float(k.value), k.out),))
    return k


def kernel_refs(k: Fused) -> list:
    """The Refs in the order they are passed to the emitted function."""
    return ([r for r, _ in k.inputs] + [r for _, r in k.outputs] +
            [r for _, r, _ in k.colsums] + [r for _, r, _ in k.rowreds])


def row_refs(k: Fused) -> list:
    """Per kernel argument (kernel_refs order): whether it advances one row per iteration row
    (full and per-row "col" inputs, outputs, row-reduction targets), rather than a broadcast
    row or scalar, or a column-sum accumulator, which every row reuses."""
    return ([bc in ("full", "col") for _, bc in k.inputs] + [True] * len(k.outputs) +
            [False] * len(k.colsums) + [True] * len(k.rowreds))


def _wide_rows(k: Fused) -> list:
    """Per kernel argument: whether it is a whole (cols)-wide row window (worth prefetching)."""
    return ([bc == "full" for _, bc in k.inputs] + [True] * len(k.outputs) +
            [False] * (len(k.colsums) + len(k.rowreds)))


def emit_fused(module: ir.Module, prog, k, name: str, outline: bool = False) -> ir.Function:
    k = as_fused(k)
    refs = kernel_refs(k)
    rows, per_t, cols = fused_domain(prog, k)
    prefetch = PF_ROWS > 0 and (rows > 1 or per_t)
    dts = {prog.buffers[r.buf].dtype for r in refs}
    width = 8 if "float64" in dts else 16
    vec = {dt: VecOps(module, llvm_float(dt), width) for dt in dts}
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * len(refs) + [I64]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")   # one call per kernel and step: keeps `run` small
    for a, r in zip(fn.args, refs):
        # noalias only where no other argument touches the same buffer (in-place kernels pass
        # one window as both input and output).
        if sum(q.buf == r.buf for q in refs) == 1:
            a.add_attribute("noalias")
    nrows = fn.args[-1]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    info = [(r, vec[prog.buffers[r.buf].dtype], ref_window(prog, r)[4]) for r in refs]
    nin, nout = len(k.inputs), len(k.outputs)
    nfull, tail = divmod(cols, width)
    tail_mask = (ir.Constant(ir.VectorType(I1, width), [1] * tail + [0] * (width - tail))
                 if tail else None)

    def columns(body):
        if nfull == 1:
            body(ir.Constant(I64, 0), None)
        elif nfull > 1:
            loop(b, ir.Constant(I64, 0), ir.Constant(I64, nfull * width), width,
                 lambda j, _: body(j, None))
        if tail:
            body(ir.Constant(I64, nfull * width), tail_mask)

    cs_args = fn.args[nin + nout:len(refs)]
    for (_, r, acc), a in zip(k.colsums, cs_args):
        if not acc:
            v = vec[prog.buffers[r.buf].dtype]
            columns(lambda j, m, a=a, v=v: v.vstore(b, ir.Constant(v.vty, 0.0), v.gep(b, a, j), m))

    per_row = row_refs(k)
    # row reductions accumulate lane-wise in a vector (an alloca SROA keeps in registers),
    # folded to one value per row after the columns
    first_rr = len(refs) - len(k.rowreds)
    accs = [(b.alloca(info[first_rr + i][1].vty), op, info[first_rr + i][1])
            for i, (_, _, op) in enumerate(k.rowreds)]

    def row(r):
        bases = []
        for (ref, v, ld), a, full in zip(info, fn.args, per_row):
            bases.append(v.gep(b, a, b.mul(r, ir.Constant(I64, ld))) if full else a)
        for p, op, v in accs:
            b.store(ir.Constant(v.vty, _IDENTITY[op]), p)
        columns(lambda j, m: _body(b, k, info, bases, width, j, m, outline, prefetch, accs))
        for (p, op, v), base in zip(accs, bases[first_rr:]):
            acc = b.load(p, typ=v.vty)
            b.store(v.hsum(b, acc) if op == "sum" else v.hmax(b, acc), base)

    loop(b, ir.Constant(I64, 0), nrows, 1, lambda r, _: row(r))
    b.ret_void()
    return fn


def _prefetch_next_rows(b, k, info, bases, j):
    for i, ((_, v, ld), full) in enumerate(zip(info, _wide_rows(k))):
        if full:    # outputs' lines are about to be written. Past the last row the address may
            #         leave the buffer (a prefetch never faults): no inbounds.
            p = b.gep(bases[i], [b.add(j, ir.Constant(I64, PF_ROWS * ld))], source_etype=v.fty)
            prefetch(b, p, write=i >= len(k.inputs))


def _body(b, k, info, bases, width, j, mask, outline=False, prefetch=False, accs=()):
    e = LLVMEmitter(b, width, outline)
    env = {}
    if prefetch:
        _prefetch_next_rows(b, k, info, bases, j)
    for i, (ref, bc) in enumerate(k.inputs):
        v = info[i][1]
        if bc in ("scalar", "col"):    # a col base is already at the row's one value
            env[f"in{i}"] = v.splat(b, b.load(bases[i], typ=v.fty))
        else:
            env[f"in{i}"] = v.vload(b, v.gep(b, bases[i], j), mask)
    default_dt = next(iter(info))[1].fty
    for dst, op, args, attrs in k.body:
        like = next((env[a] for a in args if isinstance(a, str)), None)
        vals = [env[a] if isinstance(a, str) else
                (e.const(a, like) if like is not None else
                 ir.Constant(ir.VectorType(default_dt, width), float(a))) for a in args]
        env[dst] = lower_op(e, op, vals, attrs)
    n_in, n_out = len(k.inputs), len(k.outputs)
    for o, (name, ref) in enumerate(k.outputs):
        v = info[n_in + o][1]
        val = ir.Constant(v.vty, name) if isinstance(name, float) else env[name]
        if val.type != v.vty:
            raise TypeError(f"Fused {k.name}: local {name} is {val.type}, output {ref} is {v.vty}")
        v.vstore(b, val, v.gep(b, bases[n_in + o], j), mask)
    for c, (name, ref, _) in enumerate(k.colsums):
        v = info[n_in + n_out + c][1]
        p = v.gep(b, bases[n_in + n_out + c], j)
        v.vstore(b, b.fadd(v.vload(b, p, mask), env[name]), p, mask)
    for (name, ref, _), (p, op, v) in zip(k.rowreds, accs):
        val = env[name]
        if val.type != v.vty:
            raise TypeError(f"Fused {k.name}: local {name} is {val.type}, rowred {ref} is {v.vty}")
        if mask is not None:    # lanes past the row's end must not count
            val = b.select(mask, val, ir.Constant(v.vty, _IDENTITY[op]))
        acc = b.load(p, typ=v.vty)
        b.store(b.fadd(acc, val) if op == "sum" else v.vmax(b, acc, val), p)
