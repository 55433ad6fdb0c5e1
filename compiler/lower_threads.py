"""Two threads in one program: the work split and the barrier (used by compiler/lower.py).

With `lower(..., threads=2)` both threads call the same entry with the same buffers and their
own thread id, and walk the schedule in lockstep:
  * a Gemm splits its N columns into two ranges of whole GEMM panels (so each thread streams
    only its half of the weight: the per-step products of big models are bound by reading the
    weight, which a batch split would read twice), each thread with its own packing scratch and
    its own prepacked half of a loop-invariant weight;
  * a fused elementwise kernel (and Copy/Fill) splits its rows;
  * a kernel with column sums runs on thread 0 only (both halves would add into one row);
  * every kernel call is followed by a barrier, since the next kernel may read what the other
    thread just wrote (a Gemm's columns feed every row of the next kernel).

The barrier is a sense-counting spin barrier on two cache lines of the workspace (counter and
generation, zero at entry and again after every complete call), with acquire/release atomics so
each thread's writes before it are visible to the other after it.
"""
from __future__ import annotations

from llvmlite import ir

from compiler.llvmlib.vecmath import declare
from compiler.llvmlib.vecops import I32, I64, PTR, i64, smin
BARRIER_BYTES = 128     # counter and generation on separate cache lines


def pause(b):
    """The spin-wait hint: lets the sibling hyperthread run and saves power while spinning."""
    b.call(declare(b.module, "llvm.x86.sse2.pause", ir.VoidType(), []), [])


def barrier_fn(mod: ir.Module) -> ir.Function:
    """void gg_barrier2(ptr state): returns once both threads have called it."""
    name = "gg_barrier2"
    if name in mod.globals:
        return mod.globals[name]
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [PTR]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    state, = fn.args
    entry, last, wait, done = (fn.append_basic_block(n) for n in ("entry", "last", "wait", "done"))
    b = ir.IRBuilder(entry)
    count = state
    gen_p = b.gep(state, [ir.Constant(I32, 64)], inbounds=True, source_etype=ir.IntType(8))
    gen = b.load_atomic(gen_p, "acquire", 4, typ=I32)
    arrived = b.atomic_rmw("add", count, ir.Constant(I32, 1), "acq_rel")
    b.cbranch(b.icmp_unsigned("==", arrived, ir.Constant(I32, 1)), last, wait)
    b.position_at_end(last)      # the second arrival resets the counter, then releases the first
    # atomic stores as exchanges: llvmlite's store_atomic needs typed pointers
    b.atomic_rmw("xchg", count, ir.Constant(I32, 0), "monotonic")
    b.atomic_rmw("xchg", gen_p, b.add(gen, ir.Constant(I32, 1)), "release")
    b.branch(done)
    b.position_at_end(wait)
    pause(b)
    now = b.load_atomic(gen_p, "acquire", 4, typ=I32)
    b.cbranch(b.icmp_unsigned("==", now, gen), wait, done)
    b.position_at_end(done)
    b.ret_void()
    return fn


def column_range(b, n, tid, unit):
    """(first column, count) of thread tid's share of n columns, in whole multiples of unit."""
    half = b.mul(b.sdiv(b.add(n, i64(2 * unit - 1)), i64(2 * unit)), i64(unit))
    n0 = smin(b, n, b.mul(tid, half))
    n1 = smin(b, n, b.mul(b.add(tid, i64(1)), half))
    return n0, b.sub(n1, n0)


def row_range(b, nrows, tid):
    """(first row, count) of thread tid's share of nrows rows (thread 0 takes the odd one)."""
    half = b.sdiv(b.add(nrows, i64(1)), i64(2))
    r0 = smin(b, nrows, b.mul(tid, half))
    r1 = smin(b, nrows, b.mul(b.add(tid, i64(1)), half))
    return r0, b.sub(r1, r0)


def if_true(b, cond, emit_yes, emit_no=None):
    """emit_yes() where the i1 cond holds, else emit_no() (if given)."""
    fn = b.function
    yes, no, after = (fn.append_basic_block(n) for n in ("yes", "no", "endif"))
    b.cbranch(cond, yes, no)
    for block, emit in ((yes, emit_yes), (no, emit_no)):
        b.position_at_end(block)
        if emit is not None:
            emit()
        b.branch(after)
    b.position_at_end(after)


def only_thread0(b, tid, emit):
    """Run emit() on thread 0 only."""
    if_true(b, b.icmp_signed("==", tid, i64(0)), emit)


def if_thread0(b, tid, emit0, emit1):
    """emit0() on thread 0, emit1() on thread 1 (the pipeline split's two roles)."""
    if_true(b, b.icmp_signed("==", tid, i64(0)), emit0, emit1)


def publish(b, counter, value):
    """Release-store value into the i64 counter: everything written before is visible to a
    thread that reads the new value with wait_at_least."""
    b.atomic_rmw("xchg", counter, value, "release")


def wait_at_least(b, counter, value):
    """Spin (with pause) until the i64 counter, read with acquire, is >= value."""
    fn = b.function
    spin, done = fn.append_basic_block("wait_spin"), fn.append_basic_block("wait_done")
    first = b.load_atomic(counter, "acquire", 8, typ=I64)
    b.cbranch(b.icmp_signed(">=", first, value), done, spin)
    b.position_at_end(spin)
    pause(b)
    now = b.load_atomic(counter, "acquire", 8, typ=I64)
    b.cbranch(b.icmp_signed(">=", now, value), done, spin)
    b.position_at_end(done)
