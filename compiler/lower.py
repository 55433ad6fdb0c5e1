"""Lower a scheduled `Program` to one LLVM module with one entry point.

    void run(i64 T, ptr buf_0, ..., ptr buf_n, ptr ws)   (buffers in Program.buffers order;
                                                           ws: Lowered.workspace bytes, 64-aligned)

runs pre, the forward loop over t = 0..T-1, the reverse loop over t = T-1..0 and post, with no
Python per time step. Slot addressing follows schedule.py: a Ref's pointer is
base + slot * (rows*cols) + col with the slot computed from t, and whole-sequence views multiply
the row count by T at run time, so one module serves every T: code size and compile time do not
depend on the sequence length. `unroll=True` (with a fixed T) emits the loops as straight-line
code instead, for comparison.

Fused/Copy/Fill kernels come from lower_fused. With library=True (the default) the module only
declares what the shared kernel library (compiler/llvmlib/library.py, compiled once per dtype and
linked by runtime/library.py) defines: the packed GEMM gg_gemm_<f32|f64> and the out-of-line
vector transcendental functions, so each program module is small and compiles fast. A per-step
Gemm whose B operand is a loop-invariant "param" buffer that the loops never write (the recurrent
weight) has B packed once per call, right after the pre stage, into a workspace region
(gg_prepack), and every step streams the packed panels. Other own Gemms pack their B blocks into
a workspace scratch as they go. library=False restores the self-contained module (unpacked
kernels of compiler.llvmlib.gemm emitted per variant, inlined vecmath), kept for comparison.

A Gemm may instead call the external symbols `gg_cblas_sgemm`/`gg_cblas_dgemm` with the ILP64
cblas_?gemm signature, which the runtime binds to numpy's bundled OpenBLAS: gemm="blas" sends
every product there. gemm="auto" (= "llvm" with the library) uses the packed kernels everywhere:
they tie with OpenBLAS on the whole-sequence products (T*B rows), are 1.5-2.5x faster on the
per-step ones, and never start BLAS threads under the program's own two threads
(docs/runtime.md).
Without the library, "auto" keeps the old rule: BLAS for pre/post and for per-step products of
>= BLAS_MIN_FMAS multiply-adds, the unpacked kernels otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from llvmlite import ir

from compiler.llvmlib import gemm as gemmlib
from compiler.llvmlib import pgemm
from compiler import lower_threads as mt
from compiler import pipeline as pipe_plan
from compiler.llvmlib.vecops import I64, PTR, i64, loop, smin
from compiler.lower_fused import as_fused, emit_fused, kernel_refs, row_refs
from compiler.emitter import llvm_float
from compiler.schedule import STAGES, Gemm, Program, mat_shape, ref_window, validate
from compiler.schedule import kernel_refs as sched_refs


@dataclass
class Lowered:
    ir_text: str
    entry: str                  # the exported function's name
    arg_names: list             # buffer names, in the order they follow T in the signature
    unroll_T: int | None        # the T baked in by unroll=True, else None
    n_kernels: int
    externals: list             # external symbols the runtime must bind (BLAS, kernel library)
    workspace: int = 0          # bytes of the trailing ws argument (packed weights, scratch)
    phases: list = None         # [forward entry, backward entry]: `run` split in two calls
    threads: int = 1            # 2: every entry takes a trailing i64 thread id (0 or 1)
    split: str = "cols"         # threads=2: "cols" (both threads on every kernel) or
    #                             "pipeline" (compiler/pipeline.py)


BLAS_SYMBOLS = {"float32": "gg_cblas_sgemm", "float64": "gg_cblas_dgemm"}
GEMM_MODES = ("auto", "llvm", "blas")
BLAS_MIN_FMAS = 1 << 23
SPLITS = ("cols", "pipeline")


def lower(prog: Program, *, unroll: bool = False, T: int | None = None, gemm: str = "auto",
          entry: str = "run", library: bool = True, threads: int = 1,
          split: str = "cols") -> Lowered:
    """Build the module text; unroll=True needs T and makes `run` valid for that T only.

    threads=2 emits cooperative entries `run(T, buffers..., ws, tid)` that two threads call at
    once with tid 0 and 1 on the same buffers: split="cols" shares every kernel (see
    compiler/lower_threads.py), split="pipeline" runs the loops on thread 0 while thread 1
    streams the hoisted products beside them (compiler/pipeline.py)."""
    validate(prog)
    if gemm not in GEMM_MODES:
        raise ValueError(f"lower: gemm must be one of {GEMM_MODES}, got {gemm!r}")
    if threads not in (1, 2):
        raise ValueError(f"lower: threads must be 1 or 2, got {threads}")
    if threads == 2 and (not library or gemm == "blas"):
        raise ValueError("lower: threads=2 needs the kernel library's GEMM (library=True, "
                         "gemm='auto' or 'llvm')")
    if unroll and (T is None or T < 1):
        raise ValueError("lower: unroll=True needs the sequence length T >= 1")
    if split not in SPLITS:
        raise ValueError(f"lower: split must be one of {SPLITS}, got {split!r}")
    plan = None
    if threads == 2 and split == "pipeline":
        if unroll:
            raise ValueError("lower: split='pipeline' runs the loops as loops (unroll=False)")
        plan = pipe_plan.plan(prog)
    mod = ir.Module(name=f"graphgrad_{entry}")
    names = list(prog.buffers)
    fty = ir.FunctionType(ir.VoidType(), [I64] + [PTR] * (len(names) + 1) + [I64] * (threads - 1))
    # `run` does everything; `run_fwd` (pre, packing, forward loop) then `run_bwd` (reverse loop,
    # post) on the same buffers do the same in two calls, so a caller can compute the output
    # cotangent from the forward results in between (a head and loss, the layer above).
    phases = {entry: ("pre", "fwd_loop", "bwd_loop", "post"),
              f"{entry}_fwd": ("pre", "fwd_loop"), f"{entry}_bwd": ("bwd_loop", "post")}
    fns = {}
    for name in phases:
        f = fns[name] = ir.Function(mod, fty, name=name)
        f.args[0].name = "T"
        for a, n in zip(f.args[1:], names + ["ws"]):
            a.name = n
            # two threads share every buffer, so no argument is exclusive to one call
            if threads == 1:
                a.add_attribute("noalias")
        if threads == 2:
            f.args[-1].name = "tid"
    fn = fns[entry]
    cg = _Codegen(mod, prog, dict(zip(names, fn.args[1:])), gemm, library,
                  fn.args[len(names) + 1], threads, plan)
    stages = {s: [cg.kernel_fn(k, f"{s}_{i}", s) for i, k in enumerate(getattr(prog, s))]
              for s in STAGES}
    for name, wanted in phases.items():
        f = fns[name]
        cg.args, cg.ws = dict(zip(names, f.args[1:])), f.args[len(names) + 1]
        cg.tid = f.args[-1] if threads == 2 else None
        b = ir.IRBuilder(f.append_basic_block("entry"))
        nT = ir.Constant(I64, T) if unroll else f.args[0]
        cg.T = nT

        def stage(s, t, b=b):
            for k, kf in zip(getattr(prog, s), stages[s]):
                cg.call(b, k, kf, t)

        if plan is not None:
            cg.pipeline_phases(b, wanted, stages)
            b.ret_void()
            continue
        if "pre" in wanted:
            stage("pre", None)
            cg.prepack(b)
        for s, rev in (("fwd_loop", False), ("bwd_loop", True)):
            if s not in wanted or not getattr(prog, s):
                continue
            if unroll:
                for t in (reversed(range(T)) if rev else range(T)):
                    stage(s, ir.Constant(I64, t))
            else:
                loop(b, ir.Constant(I64, 0), nT, 1,
                     lambda i, _, s=s, rev=rev, b=b, nT=nT: stage(
                         s, b.sub(b.sub(nT, ir.Constant(I64, 1)), i) if rev else i))
        if "post" in wanted:
            stage("post", None)
        b.ret_void()
    externals = cg.externals | {f.name for f in mod.functions
                                if f.is_declaration and f.name.startswith("gg_")}
    return Lowered(str(mod), entry, names, T if unroll else None,
                   sum(len(getattr(prog, s)) for s in STAGES), sorted(externals), cg.ws_bytes,
                   [f"{entry}_fwd", f"{entry}_bwd"], threads,
                   "pipeline" if plan is not None else "cols")


class _Codegen:
    def __init__(self, mod, prog, args, gemm, library=True, ws=None, threads=1, plan=None):
        self.mod, self.prog, self.args, self.gemm = mod, prog, args, gemm
        self.library, self.ws = library, ws
        self.threads, self.tid = threads, None
        self.plan = plan
        self.solo = False       # pipeline: the current kernels run on one thread, unsplit
        self.chunk = None       # pipeline stream: (first step, steps, is-first-chunk i1)
        self.T = None
        self.externals = set()
        self.ws_bytes = 0
        if threads == 2:
            self.barrier_off = self.alloc(mt.BARRIER_BYTES)     # offset 0: the runtime zeroes it
        if plan is not None:    # the stream's progress counters and the shared chunks'
            self.progress_off = self.alloc(3 * 64)      # claims, zero between calls
        self.scratch = {}       # dtype -> ws offsets of the gemm packing scratch, per thread
        self.packed = {}        # (buf, col, cols, trans_b) -> (ws offsets of its packed copy
        #                         (each thread's column half when threads=2), a Gemm using it)
        self.loop_writes = {r.buf for s in ("fwd_loop", "bwd_loop") for k in getattr(prog, s)
                            for r in sched_refs(k)[1]}

    def alloc(self, nbytes):
        off = self.ws_bytes
        self.ws_bytes += -(-nbytes // 64) * 64
        return off

    def ws_ptr(self, b, off):
        return b.gep(self.ws, [ir.Constant(I64, off)], inbounds=True, source_etype=ir.IntType(8))

    def _packable(self, k, stage):
        buf = self.prog.buffers[k.b.buf]
        return (stage in ("fwd_loop", "bwd_loop") and buf.kind == "param" and buf.steps is None
                and k.b.buf not in self.loop_writes)

    def _pack_key(self, k):
        return (k.b.buf, k.b.col, k.b.cols, k.trans_b)

    def _kn(self, k):
        """(K, N) of op(B) for a Gemm."""
        rows, _, _, cols, _ = ref_window(self.prog, k.b)
        return (cols, rows) if k.trans_b else (rows, cols)

    def mine(self, b, offs):
        """This thread's workspace region among per-thread offsets."""
        if self.threads == 1 or len(offs) == 1:
            return self.ws_ptr(b, offs[0])
        return b.select(b.icmp_signed("==", self.tid, ir.Constant(I64, 0)),
                        self.ws_ptr(b, offs[0]), self.ws_ptr(b, offs[1]))

    def col_share(self, b, n, dtype):
        """(first column, count) of this thread's share of a product's n columns."""
        if self.threads == 1 or self.solo:
            return ir.Constant(I64, 0), n
        return mt.column_range(b, n, self.tid, pgemm.nr(dtype))

    def prepack(self, b):
        """Pack every loop-invariant B operand once (after pre, before the loops); with two
        threads each packs the column half its products will use."""
        for (name, col, cols, trans_b), (offs, k) in self.packed.items():
            dtype = self.prog.buffers[name].dtype
            K, N = self._kn(k)
            ldb = ref_window(self.prog, k.b)[4]
            n0, n = self.col_share(b, i64(N), dtype)
            src = self.offset(b, self.ptr(b, k.b, None), b.mul(n0, i64(ldb)) if trans_b else n0,
                              dtype)
            b.call(pgemm.declare(self.mod, "gg_prepack", dtype),
                   [src, i64(ldb), i64(int(trans_b)), i64(K), n, self.mine(b, offs)])

    def offset(self, b, p, n, dtype):
        return b.gep(p, [n], inbounds=True, source_etype=llvm_float(dtype))

    def barrier(self, b):
        if self.threads == 2 and not self.solo:
            b.call(mt.barrier_fn(self.mod), [self.ws_ptr(b, self.barrier_off)])

    def use_blas(self, k, stage):
        if self.gemm != "auto":
            return self.gemm == "blas"
        if self.library:
            return False    # the packed kernels match OpenBLAS on the big products too
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
        if isinstance(k, Gemm) and self.library:
            dtype = self.prog.buffers[k.out.buf].dtype
            esize = 8 if dtype == "float64" else 4
            if self._packable(k, stage):
                key = self._pack_key(k)
                if key not in self.packed:
                    K, N = self._kn(k)
                    copies = 1 if self.plan is not None else self.threads
                    if copies == 2:   # a column half, rounded up to whole panels
                        N = -(-N // (2 * pgemm.nr(dtype))) * pgemm.nr(dtype)
                    self.packed[key] = (
                        [self.alloc(pgemm.packed_elems(dtype, K, N) * esize)
                         for _ in range(copies)], k)
            elif dtype not in self.scratch:
                self.scratch[dtype] = [self.alloc(pgemm.workspace_elems(dtype) * esize)
                                       for _ in range(self.threads)]
            return pgemm.declare(self.mod, "gg_gemm", dtype)
        if isinstance(k, Gemm):
            dtype = self.prog.buffers[k.out.buf].dtype
            name = (f"gg_gemm_{dtype}_{'t' if k.trans_a else 'n'}{'t' if k.trans_b else 'n'}"
                    f"{'_acc' if k.accumulate else ''}")
            if name not in self.mod.globals:
                gemmlib.emit_gemm(self.mod, name, dtype, trans_a=k.trans_a, trans_b=k.trans_b,
                                  accumulate=k.accumulate)
            return self.mod.globals[name]
        return emit_fused(self.mod, self.prog, k, f"k_{tag}_{getattr(k, 'name', 'op')}",
                          outline=self.library)

    def rows(self, b, ref):
        rows, per_t, _, _, _ = ref_window(self.prog, ref)
        steps = self.chunk[1] if self.chunk else self.T
        return b.mul(steps, ir.Constant(I64, rows)) if per_t else ir.Constant(I64, rows)

    def ptr(self, b, ref, t):
        """Address of the window's first element for loop index t (an i64 value or None)."""
        buf = self.prog.buffers[ref.buf]
        _, _, col, _, _ = ref_window(self.prog, ref)
        if buf.steps is None or ref.t in ("first", "all"):
            slot = i64(0)
        elif ref.t == "all+1":
            slot = i64(1)
        elif ref.t == "last":
            slot = self.T if buf.steps == "T+1" else b.sub(self.T, i64(1))
        else:
            slot = b.add(t, i64(ref.t)) if ref.t else t
        if self.chunk and ref.t in ("all", "all+1"):
            slot = b.add(slot, self.chunk[0])
        r, cols = mat_shape(buf)
        off = b.add(b.mul(slot, i64(r * cols)), i64(col))
        return b.gep(self.args[ref.buf], [off], inbounds=True,
                     source_etype=llvm_float(buf.dtype))

    def call(self, b, k, f, t):
        if isinstance(k, Gemm):
            ra, rb = ref_window(self.prog, k.a), ref_window(self.prog, k.b)
            a_rows, b_rows = self.rows(b, k.a), self.rows(b, k.b)
            m, kk = (i64(ra[3]), a_rows) if k.trans_a else (a_rows, i64(ra[3]))
            n = b_rows if k.trans_b else i64(rb[3])
            pa, pb, pc = self.ptr(b, k.a, t), self.ptr(b, k.b, t), self.ptr(b, k.out, t)
            lda, ldb, ldc = i64(ra[4]), i64(rb[4]), i64(ref_window(self.prog, k.out)[4])
            if f.name in BLAS_SYMBOLS.values():
                i32, fty = ir.IntType(32), f.args[6].type
                row_major, no, yes = (ir.Constant(i32, v) for v in (101, 111, 112))
                b.call(f, [row_major, yes if k.trans_a else no, yes if k.trans_b else no, m, n,
                           kk, ir.Constant(fty, 1.0), pa, lda, pb, ldb,
                           ir.Constant(fty, 1.0 if k.accumulate else 0.0), pc, ldc])
            elif self.library:
                sai, sak = (i64(1), lda) if k.trans_a else (lda, i64(1))
                dtype = self.prog.buffers[k.out.buf].dtype
                key = self._pack_key(k)
                packed = t is not None and self._packable(k, "fwd_loop") and key in self.packed
                n0, n = self.col_share(b, n, dtype)
                pc = self.offset(b, pc, n0, dtype)
                if packed:
                    pb = self.mine(b, self.packed[key][0])
                    scratch = self.ws_ptr(b, 0)
                else:
                    pb = self.offset(b, pb, b.mul(n0, ldb) if k.trans_b else n0, dtype)
                    scratch = self.mine(b, self.scratch[dtype])
                acc = i64(int(k.accumulate))
                if self.chunk and not k.accumulate and ref_window(self.prog, k.a)[1] and \
                        k.trans_a:   # a sum over time: later chunks add to the first's
                    acc = b.select(self.chunk[2], acc, i64(1))
                b.call(f, [pa, sai, sak, pb, ldb, i64(int(k.trans_b)), pc, ldc, m, n, kk,
                           acc, scratch, i64(int(packed))])
            else:
                b.call(f, [pa, pb, pc, m, n, kk, lda, ldb, ldc])
            self.barrier(b)
            return
        fk = as_fused(k)
        dom = next(r for r in [r for _, r in fk.outputs] +
                   [r for r, bc in fk.inputs if bc == "full"])
        refs, nrows = kernel_refs(fk), self.rows(b, dom)
        ptrs = [self.ptr(b, r, t) for r in refs]
        if self.chunk and any(not acc for _, _, acc in fk.colsums):
            # column sums over time: the first chunk in the kernel's mode, the rest add
            later = self.accumulating(fk, f)
            mt.if_true(b, self.chunk[2], lambda: b.call(f, ptrs + [nrows]),
                       lambda: b.call(later, ptrs + [nrows]))
        elif self.threads == 1 or self.solo:
            b.call(f, ptrs + [nrows])
        elif fk.colsums:        # both halves would add into the same sums
            mt.only_thread0(b, self.tid, lambda: b.call(f, ptrs + [nrows]))
        else:
            r0, nrows = mt.row_range(b, nrows, self.tid)
            ptrs = [self.offset(b, p, b.mul(r0, i64(ref_window(self.prog, r)[4])),
                                self.prog.buffers[r.buf].dtype) if whole_rows else p
                    for p, r, whole_rows in zip(ptrs, refs, row_refs(fk))]
            b.call(f, ptrs + [nrows])
        self.barrier(b)

    # -- split="pipeline" (compiler/pipeline.py)
    def accumulating(self, fk, f):
        """The variant of fused kernel function f whose column sums all add to their targets
        (the stream's chunks after the first)."""
        name = f.name + "_acc"
        if name not in self.mod.globals:
            later = replace(fk, colsums=tuple((n, r, True) for n, r, _ in fk.colsums))
            emit_fused(self.mod, self.prog, later, name, outline=self.library)
        return self.mod.globals[name]

    def pipeline_phases(self, b, wanted, stages):
        """An entry's stages as the two-thread pipeline: the cooperative pre kernels on both
        threads; then thread 0 packs the loop weights and runs the loops alone while thread 1
        streams the other pre kernels ahead of the forward loop and post behind the reverse
        loop; then the cooperative post kernels on both threads."""
        plan, prog = self.plan, self.prog
        pre_done = self.ws_ptr(b, self.progress_off)
        bwd_done = self.ws_ptr(b, self.progress_off + 64)
        claims = self.ws_ptr(b, self.progress_off + 128)

        def run(stage, idx, t):
            for i in idx:
                self.call(b, getattr(prog, stage)[i], stages[stage][i], t)

        if "pre" in wanted:
            run("pre", plan.pre_rest, None)
        self.solo = True

        def loops():
            if "pre" in wanted:
                self.prepack(b)
            if "fwd_loop" in wanted:
                def fwd_step(t, _):
                    if plan.pre_stream:
                        mt.wait_at_least(b, pre_done, smin(
                            b, self.T, b.add(t, i64(1 + plan.lookahead))))
                    run("fwd_loop", range(len(prog.fwd_loop)), t)
                if prog.fwd_loop:
                    loop(b, i64(0), self.T, 1, fwd_step)
                if plan.pre_stream:     # the reverse loop may read any step's pre results
                    mt.wait_at_least(b, pre_done, self.T)
            if "bwd_loop" in wanted and prog.bwd_loop:
                def bwd_step(i, _):
                    run("bwd_loop", range(len(prog.bwd_loop)), b.sub(b.sub(self.T, i64(1)), i))
                    if plan.post_stream:
                        mt.publish(b, bwd_done, b.add(i, i64(1)))   # steps finished so far
                loop(b, i64(0), self.T, 1, bwd_step)
                if "post" in wanted and plan.post_shared:
                    self.drain_shared(b, stages, claims, side=1)

        def stream():
            if "pre" in wanted and plan.pre_stream:
                self.stream(b, "pre", plan.pre_stream, stages, publish=pre_done)
            if "post" in wanted and plan.post_stream:
                self.stream(b, "post", plan.post_stream, stages, wait=bwd_done,
                            claims=claims)

        mt.if_thread0(b, self.tid, loops, stream)
        self.solo = False
        if "post" in wanted:
            self.barrier(b)     # the reverse loop and the stream are done
            run("post", plan.post_rest, None)
        self.barrier(b)         # both done with the counters: zero them for the next call
        mt.only_thread0(b, self.tid, lambda: [mt.publish(b, p, i64(0))
                                              for p in (pre_done, bwd_done, claims)])

    def nchunks(self, b):
        return b.sdiv(b.add(self.T, i64(self.plan.chunk - 1)), i64(self.plan.chunk))

    def run_chunk(self, b, stage, idx, stages, ci, t0, n):
        """Run the stage's kernels idx on chunk ci: steps t0 .. t0+n-1."""
        self.chunk = (t0, n, b.icmp_signed("==", ci, i64(0)))
        for i in idx:
            self.call(b, getattr(self.prog, stage)[i], stages[stage][i], None)
        self.chunk = None

    def post_chunk(self, b, ci, idx, stages):
        """Run the post kernels idx on chunk ci: steps counted down from T, chunk 0 the latest."""
        t1 = b.sub(self.T, b.mul(ci, i64(self.plan.chunk)))
        n = smin(b, i64(self.plan.chunk), t1)
        self.run_chunk(b, "post", idx, stages, ci, b.sub(t1, n), n)

    def claim(self, b, claims, side):
        """Claim the next shared post chunk from one end: (claimed i1, chunk). One i64 word
        counts both ends' claims (thread 1, side 0, from chunk 0 up in the low half; thread 0,
        side 1, from the last chunk down in the high half), so a single atomic add settles
        every race: a claim holds when the two counts before it leave a chunk between them."""
        old = b.atomic_rmw("add", claims, i64(1 << (32 * side)), "monotonic")
        lo, hi = _low_half(b, old), b.lshr(old, i64(32))
        nch = self.nchunks(b)
        ci = lo if side == 0 else b.sub(b.sub(nch, i64(1)), hi)
        return b.icmp_signed("<", b.add(lo, hi), nch), ci

    def drain_shared(self, b, stages, claims, side):
        """Claim and run shared chunks until none is left (the reverse loop is over)."""
        fn = b.function
        head, body, done = (fn.append_basic_block(n) for n in ("share", "share_run", "shared"))
        b.branch(head)
        b.position_at_end(head)
        ok, ci = self.claim(b, claims, side)
        b.cbranch(ok, body, done)
        b.position_at_end(body)
        self.post_chunk(b, ci, self.plan.post_shared, stages)
        b.branch(head)
        b.position_at_end(done)

    def wait_sharing(self, b, stages, claims, done_ptr, need, ci):
        """Thread 1 before post chunk ci: until the reverse loop has finished `need` steps, run
        shared chunks it has already passed (below ci) instead of spinning."""
        fn = b.function
        head, check, take, run, spin, done = (fn.append_basic_block(n) for n in (
            "idle", "idle_check", "idle_take", "idle_run", "idle_spin", "idle_done"))
        b.branch(head)
        b.position_at_end(head)
        now = b.load_atomic(done_ptr, "acquire", 8, typ=I64)
        b.cbranch(b.icmp_signed(">=", now, need), done, check)
        b.position_at_end(check)
        mine = _low_half(b, b.load_atomic(claims, "monotonic", 8, typ=I64))
        b.cbranch(b.icmp_signed("<", mine, ci), take, spin)
        b.position_at_end(take)
        ok, cj = self.claim(b, claims, 0)
        b.cbranch(ok, run, head)
        b.position_at_end(run)
        self.post_chunk(b, cj, self.plan.post_shared, stages)
        b.branch(head)
        b.position_at_end(spin)
        mt.pause(b)
        b.branch(head)
        b.position_at_end(done)

    def stream(self, b, stage, idx, stages, publish=None, wait=None, claims=None):
        """Thread 1's chunks of a stage's streamed kernels: pre in ascending steps, publishing
        how many are done; post in descending steps, each chunk after the reverse loop has
        passed it (and the shared kernels' chunks as claimed, see drain_shared)."""
        C, T = self.plan.chunk, self.T
        shared = self.plan.post_shared if stage == "post" else ()
        own = [i for i in idx if i not in shared]

        def chunk(ci, _):
            if stage == "pre":
                t0 = b.mul(ci, i64(C))
                n = smin(b, i64(C), b.sub(T, t0))
                self.run_chunk(b, "pre", own, stages, ci, t0, n)
                mt.publish(b, publish, b.add(t0, n))
                return
            need = smin(b, T, b.mul(b.add(ci, i64(1)), i64(C)))  # steps the chunk needs done
            if shared:
                self.wait_sharing(b, stages, claims, wait, need, ci)
            else:
                mt.wait_at_least(b, wait, need)
            self.post_chunk(b, ci, own, stages)

        loop(b, i64(0), self.nchunks(b), 1, chunk)
        if shared:
            self.drain_shared(b, stages, claims, side=0)


def _low_half(b, word):
    """Thread 1's count in the shared chunks' claims word (thread 0's is the high half)."""
    return b.and_(word, i64(0xFFFFFFFF))
