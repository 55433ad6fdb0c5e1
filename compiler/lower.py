"""Lower a scheduled `Program` to one LLVM module with one entry point.

    void run(i64 T, ptr buf_0, ..., ptr buf_n)       (buffers in Program.buffers order)

runs pre, the forward loop over t = 0..T-1, the reverse loop over t = T-1..0 and post, with no
Python per time step. Slot addressing follows schedule.py: a Ref's pointer is
base + slot * (rows*cols) + col with the slot computed from t, and whole-sequence views multiply
the row count by T at run time, so one module serves every T: code size and compile time do not
depend on the sequence length. `unroll=True` (with a fixed T) emits the loops as straight-line
code instead, for comparison.

Fused/Copy/Fill kernels come from lower_fused. A Gemm either calls the register-blocked AVX-512
kernels of compiler.llvmlib.gemm (one emitted function per dtype/transposes/accumulate variant)
or the external symbols `gg_cblas_sgemm`/`gg_cblas_dgemm` with the ILP64 cblas_?gemm signature,
which the runtime binds to numpy's bundled OpenBLAS. gemm="auto" sends the whole-sequence products
(pre/post, thousands of rows) and large per-step products (>= BLAS_MIN_FMAS multiply-adds, where
the weight no longer fits in L2 and BLAS's packing wins) to BLAS, and keeps small per-step
products in our unpacked kernels (measured at B=32, H=128: 72-100 us vs 106 us per step).
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from compiler.llvmlib import gemm as gemmlib
from compiler.lower_fused import I64, PTR, counted_loop, emit_fused, kernel_refs, as_fused
from compiler.emitter import llvm_float
from compiler.schedule import STAGES, Gemm, Program, mat_shape, ref_window, validate


@dataclass
class Lowered:
    ir_text: str
    entry: str                  # the exported function's name
    arg_names: list             # buffer names, in the order they follow T in the signature
    unroll_T: int | None        # the T baked in by unroll=True, else None
    n_kernels: int
    externals: list             # external symbols the runtime must bind (BLAS)


BLAS_SYMBOLS = {"float32": "gg_cblas_sgemm", "float64": "gg_cblas_dgemm"}
GEMM_MODES = ("auto", "llvm", "blas")
BLAS_MIN_FMAS = 1 << 23


def lower(prog: Program, *, unroll: bool = False, T: int | None = None, gemm: str = "auto",
          entry: str = "run") -> Lowered:
    """Build the module text; unroll=True needs T and makes `run` valid for that T only."""
    validate(prog)
    if gemm not in GEMM_MODES:
        raise ValueError(f"lower: gemm must be one of {GEMM_MODES}, got {gemm!r}")
    if unroll and (T is None or T < 1):
        raise ValueError("lower: unroll=True needs the sequence length T >= 1")
    mod = ir.Module(name=f"graphgrad_{entry}")
    names = list(prog.buffers)
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I64] + [PTR] * len(names)), name=entry)
    fn.args[0].name = "T"
    for a, n in zip(fn.args[1:], names):
        a.name = n
        a.add_attribute("noalias")
    cg = _Codegen(mod, prog, dict(zip(names, fn.args[1:])), gemm)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    nT = ir.Constant(I64, T) if unroll else fn.args[0]
    cg.T = nT
    stages = {s: [cg.kernel_fn(k, f"{s}_{i}", s) for i, k in enumerate(getattr(prog, s))]
              for s in STAGES}

    def stage(s, t):
        for k, f in zip(getattr(prog, s), stages[s]):
            cg.call(b, k, f, t)

    stage("pre", None)
    for s, rev in (("fwd_loop", False), ("bwd_loop", True)):
        if not getattr(prog, s):
            continue
        if unroll:
            for t in (reversed(range(T)) if rev else range(T)):
                stage(s, ir.Constant(I64, t))
        else:
            counted_loop(b, ir.Constant(I64, 0), nT, 1,
                         lambda i, s=s, rev=rev: stage(s, b.sub(b.sub(nT, ir.Constant(I64, 1)), i)
                                                      if rev else i))
    stage("post", None)
    b.ret_void()
    return Lowered(str(mod), entry, names, T if unroll else None,
                   sum(len(getattr(prog, s)) for s in STAGES), sorted(cg.externals))


class _Codegen:
    def __init__(self, mod, prog, args, gemm):
        self.mod, self.prog, self.args, self.gemm = mod, prog, args, gemm
        self.T = None
        self.externals = set()

    def use_blas(self, k, stage):
        if self.gemm != "auto":
            return self.gemm == "blas"
        if stage in ("pre", "post"):
            return True
        a_rows, _, _, a_cols, _ = ref_window(self.prog, k.a)
        return a_rows * a_cols * ref_window(self.prog, k.out)[3] >= BLAS_MIN_FMAS

    def kernel_fn(self, k, tag, stage):
        if isinstance(k, Gemm) and self.use_blas(k, stage):
            dtype = self.prog.buffers[k.out.buf].dtype
            name, fty = BLAS_SYMBOLS[dtype], llvm_float(dtype)
            self.externals.add(name)
            i32 = ir.IntType(32)
            return self.mod.globals.get(name) or ir.Function(self.mod, ir.FunctionType(
                ir.VoidType(), [i32] * 3 + [I64] * 3 + [fty, PTR, I64, PTR, I64, fty, PTR, I64]),
                name=name)
        if isinstance(k, Gemm):
            dtype = self.prog.buffers[k.out.buf].dtype
            name = (f"gg_gemm_{dtype}_{'t' if k.trans_a else 'n'}{'t' if k.trans_b else 'n'}"
                    f"{'_acc' if k.accumulate else ''}")
            if name not in self.mod.globals:
                gemmlib.emit_gemm(self.mod, name, dtype, trans_a=k.trans_a, trans_b=k.trans_b,
                                  accumulate=k.accumulate)
            return self.mod.globals[name]
        return emit_fused(self.mod, self.prog, k, f"k_{tag}_{getattr(k, 'name', 'op')}")

    def rows(self, b, ref):
        rows, per_t, _, _, _ = ref_window(self.prog, ref)
        return b.mul(self.T, ir.Constant(I64, rows)) if per_t else ir.Constant(I64, rows)

    def ptr(self, b, ref, t):
        """Address of the window's first element for loop index t (an i64 value or None)."""
        buf = self.prog.buffers[ref.buf]
        _, _, col, _, _ = ref_window(self.prog, ref)
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        if buf.steps is None or ref.t in ("first", "all"):
            slot = c(0)
        elif ref.t == "all+1":
            slot = c(1)
        elif ref.t == "last":
            slot = self.T if buf.steps == "T+1" else b.sub(self.T, c(1))
        else:
            slot = b.add(t, c(ref.t)) if ref.t else t
        r, cols = mat_shape(buf)
        off = b.add(b.mul(slot, c(r * cols)), c(col))
        return b.gep(self.args[ref.buf], [off], inbounds=True,
                     source_etype=llvm_float(buf.dtype))

    def call(self, b, k, f, t):
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        if isinstance(k, Gemm):
            ra, rb = ref_window(self.prog, k.a), ref_window(self.prog, k.b)
            a_rows, b_rows = self.rows(b, k.a), self.rows(b, k.b)
            m, kk = (c(ra[3]), a_rows) if k.trans_a else (a_rows, c(ra[3]))
            n = b_rows if k.trans_b else c(rb[3])
            pa, pb, pc = self.ptr(b, k.a, t), self.ptr(b, k.b, t), self.ptr(b, k.out, t)
            lda, ldb, ldc = c(ra[4]), c(rb[4]), c(ref_window(self.prog, k.out)[4])
            if f.name in BLAS_SYMBOLS.values():
                i32, fty = ir.IntType(32), f.args[6].type
                row_major, no, yes = (ir.Constant(i32, v) for v in (101, 111, 112))
                b.call(f, [row_major, yes if k.trans_a else no, yes if k.trans_b else no, m, n,
                           kk, ir.Constant(fty, 1.0), pa, lda, pb, ldb,
                           ir.Constant(fty, 1.0 if k.accumulate else 0.0), pc, ldc])
            else:
                b.call(f, [pa, pb, pc, m, n, kk, lda, ldb, ldc])
            return
        fk = as_fused(k)
        dom = next(r for r in [r for _, r in fk.outputs] +
                   [r for r, bc in fk.inputs if bc == "full"])
        b.call(f, [self.ptr(b, r, t) for r in kernel_refs(fk)] + [self.rows(b, dom)])
