"""Single-core float32 FMA peak, measured with a loop emitted through llvmlite.

The loop keeps ACC independent <16 x float> accumulators so FMA latency (4 cycles)
times throughput (2/cycle on two-FMA-unit AVX-512 parts) is covered.
Run: python benchmarks/fma_peak.py
"""
from __future__ import annotations

import ctypes
import os
import sys

from llvmlite import ir

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime import jit  # noqa: E402
from runtime.timing import median_ms  # noqa: E402

W, ACC = 16, 12


def _module() -> str:
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vty = ir.VectorType(f32, W)
    mod = ir.Module("fma_peak")
    mod.triple = jit.target_info().triple
    fma = ir.Function(mod, ir.FunctionType(vty, [vty] * 3), name=f"llvm.fma.v{W}f32")
    fn = ir.Function(mod, ir.FunctionType(f32, [i64, f32]), name="fma_loop")
    n, seed = fn.args
    entry, loop, done = (fn.append_basic_block(s) for s in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    x = b.insert_element(ir.Constant(vty, None), seed, ir.Constant(ir.IntType(32), 0))
    x = b.shuffle_vector(x, x, ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W))
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), entry)
    accs = []
    for k in range(ACC):
        p = b.phi(vty)
        p.add_incoming(ir.Constant(vty, float(k)), entry)
        accs.append(p)
    # a = a*x + x keeps values bounded for x < 1 and is not foldable.
    new = [b.call(fma, [a, x, x]) for a in accs]
    for p, v in zip(accs, new):
        p.add_incoming(v, loop)
    nxt = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, n), loop, done)
    b.position_at_end(done)
    tot = new[0]
    for v in new[1:]:
        tot = b.fadd(tot, v)
    b.ret(b.extract_element(tot, ir.Constant(ir.IntType(32), 0)))
    return str(mod)


def fma_peak_gflops(iters: int = 20_000_000, repeats: int = 5) -> float:
    """Measured float32 GFLOP/s of one core (2 flops per FMA lane)."""
    lib = jit.jit(_module(), {"fma_loop": ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64,
                                                           ctypes.c_float)})
    f = lib["fma_loop"]
    ms = median_ms(lambda: f(iters, 0.5), repeats=repeats, warmup=1)
    return iters * ACC * W * 2 / (ms * 1e-3) / 1e9


if __name__ == "__main__":
    print(f"float32 FMA peak, 1 core: {fma_peak_gflops():.1f} GFLOP/s "
          f"({jit.target_info().cpu})")
