"""Run a scheduled Program natively: compile (through the on-disk cache), bind numpy buffers,
call the module's `run(T, ptrs..., ws)` through ctypes.

Programs link the shared kernel library (runtime/library.py: packed GEMM, vector math) by name;
`ws` is a per-instance workspace (packed loop-invariant weights, GEMM packing scratch).

ctypes releases the GIL for the whole call, which covers the entire forward and BPTT loop, so
two Python threads can each be inside native code at once. `threads=2` (split="cols", the
default) calls one module compiled with lower(threads=2) from two threads with thread ids 0 and
1: they share the buffers, split every product's columns and every elementwise kernel's rows, and
meet at a barrier after each kernel (compiler/lower_threads.py); the results are bit-identical
to one thread. split="batch" instead runs two program instances compiled for B/2 rows and sums
the parameter gradients: no barriers, but each half streams the whole recurrent weight every
step, which is what bounds the per-step products of the large models (measured, LSTM
(16,128,1024,50): 1 thread 430-455 ms, batch split 325-350 ms, column split 205-225 ms). A
small model's step costs about as much on half the work (latency-bound), so below
SPLIT_MIN_FLOPS of per-step products per thread everything runs in one thread. Two threads only
pay when the VM really has two cores free: the dev VM sometimes schedules both vCPUs on one host
core (two concurrent fma_peak runs then report ~67 GFLOP/s each instead of ~135).
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from compiler import lower as lowering
from compiler.pipeline import plan as pipe_plan
from compiler.sched_numpy import allocate, user_view
from compiler.schedule import STAGES, Gemm, Program, is_batched, kernel_refs, ref_window, with_batch
from runtime import cache, jit
from runtime import library as kernel_library


def _libc_externals():
    # LLVM turns zeroing/copy loops into memset/memcpy calls; the JIT's process lookup does not
    # always see libc, so hand the addresses over explicitly.
    libc = ctypes.CDLL(None)
    return {n: ctypes.cast(getattr(libc, n), ctypes.c_void_p).value
            for n in ("memset", "memcpy", "memmove")}


@functools.cache
def blas_externals() -> dict:
    """gg_cblas_?gemm -> addresses of numpy's bundled OpenBLAS ILP64 cblas_?gemm ({} if absent)."""
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "libscipy_openblas*.so*"))):
        lib = ctypes.CDLL(path)
        try:
            return {ours: ctypes.cast(getattr(lib, f"scipy_cblas_{c}gemm64_"),
                                      ctypes.c_void_p).value
                    for ours, c in (("gg_cblas_sgemm", "s"), ("gg_cblas_dgemm", "d"))}
        except AttributeError:
            continue
    return {}


def _copy_in(dst, value, tile=256):
    """dst[...] = value, in square tiles when value is a transposed view of a big C-ordered
    matrix (the graph side passes W^T views): numpy's element-wise strided copy misses the cache
    on every read there (measured 8.3 ms vs 1.5 ms for a 2048 x 512 float32 weight)."""
    v = np.asarray(value)
    if v.ndim != 2 or v.size < 1 << 16 or v.flags.c_contiguous or not v.T.flags.c_contiguous:
        dst[...] = v
        return
    for i in range(0, v.shape[0], tile):
        for j in range(0, v.shape[1], tile):
            dst[i:i + tile, j:j + tile] = v[i:i + tile, j:j + tile]


# Per-step work (FLOPs of the loop products for one batch half) below which threads=2 runs the
# whole batch in one thread: a half-batch step of a small model costs nearly as much as a whole
# one (latency, not throughput) and the split adds ~2-4 ms of Python per call. Measured on the
# dev VM: RNN (B,I,H)=(32,64,128), 1 MFLOP per half-step: 8.7 ms whole vs 11-13 ms split; LSTM
# (32,64,128), 4.2 MFLOP: 32 ms whole vs 21 ms split.
SPLIT_MIN_FLOPS = 2_500_000
# split="auto" picks the pipeline (compiler/pipeline.py: the loops on one thread, the hoisted
# products streamed beside them on the other) when the loop products per step (forward +
# backward, whole batch) lie in PIPELINE_FLOPS and the two threads' products can be balanced:
# the loops on one side, the hoisted products less the shared ones (the input gradient, which
# either thread runs) on the other, neither more than PIPELINE_BALANCE times half the total.
# Below the FLOP range a step is too short to hide the hand-over (LSTM (1,32,64,100): 1.28 ms
# against 0.90 on one thread); above it the column split is as fast (LSTM (64,512,512,50):
# 1.01). Measured, pipeline / column split, interleaved in one process: RNN (32,256,256,100)
# 0.82, LSTM 0.92, GRU (32,64,128,100) 0.92, RNN (64,512,512,50) 0.94 (all balanced); GRU
# (32,256,256,100) 1.13 (1.33 of an even half: it shares nothing, its input gradient reads
# gate gradients the stream assembles), RNN (16,128,1024,50) 1.34 and LSTM 1.71 (1.19: the
# loops' weights, streamed from memory every step, are the larger side). RNN and LSTM
# (32,64,128,100), which the column split leaves on one thread: pipeline / one thread 0.63-0.81.
PIPELINE_FLOPS = (1_000_000, 100_000_000)
PIPELINE_BALANCE = 1.15
SPLITS = ("auto", "cols", "batch", "pipeline")


def step_flops(prog: Program, stages=("fwd_loop", "bwd_loop"), kernels=None) -> int:
    """Multiply-add FLOPs of the forward + backward loop products for one time step (of the
    whole-sequence products of pre and post, per step, with stages=("pre", "post"); of the
    given kernels instead, if any)."""
    total = 0
    for k in kernels if kernels is not None else [k for s in stages for k in getattr(prog, s)]:
        if isinstance(k, Gemm):
            a_rows, _, _, a_cols, _ = ref_window(prog, k.a)
            n = ref_window(prog, k.out)[3]
            total += 2 * a_rows * a_cols * n
    return total


def pipeline_fits(prog: Program) -> bool:
    """Whether split="auto" runs prog's two threads as a pipeline (see PIPELINE_FLOPS)."""
    plan = pipe_plan(prog)
    loop, hoisted = step_flops(prog), step_flops(prog, ("pre", "post"))
    shared = step_flops(prog, kernels=[prog.post[i] for i in plan.post_shared])
    lo, hi = PIPELINE_FLOPS
    return (plan.streams and lo <= loop < hi and
            max(loop, hoisted - shared) <= PIPELINE_BALANCE * (loop + hoisted) / 2)


class _Instance:
    """One compiled module plus its buffers (re-allocated when T changes)."""

    def __init__(self, prog: Program, unroll, T, opt, gemm, library=True, threads=1,
                 split="cols"):
        self.prog = prog
        if gemm != "llvm" and not blas_externals():
            gemm = "llvm"   # no OpenBLAS next to numpy: our kernels everywhere
        self.lowered = lowering.lower(prog, unroll=unroll, T=T, gemm=gemm, library=library,
                                      threads=threads, split=split)
        obj, self.cache_hit = cache.compile_cached(self.lowered.ir_text, opt,
                                                   {"entry": self.lowered.entry})
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64,
                                 *[ctypes.c_void_p] * (len(self.lowered.arg_names) + 1),
                                 *[ctypes.c_int64] * (threads - 1))
        # threads=2: one module, two threads calling it at once (thread ids 0 and 1)
        self.helper = ThreadPoolExecutor(1) if threads == 2 else None
        entries = {None: self.lowered.entry}
        if self.lowered.phases:
            entries.update(fwd=self.lowered.phases[0], bwd=self.lowered.phases[1])
        self.loaded = jit.load(obj, {e: proto for e in entries.values()},
                               {**_libc_externals(), **blas_externals(),
                                **kernel_library.externals(self.lowered.externals)})
        self.fns = {phase: self.loaded[e] for phase, e in entries.items()}
        self.T, self.store, self.ptrs = None, None, None
        self.ws = None
        self.bound = {}
        self.written = {r.buf for s in STAGES for k in getattr(prog, s)
                        for r in kernel_refs(k)[1]}
        self.arg_index = {n: i for i, n in enumerate(self.lowered.arg_names)}

    def run(self, T, inputs, zero, phase=None, borrow=False):
        if self.lowered.unroll_T is not None and T != self.lowered.unroll_T:
            raise ValueError(f"this program was unrolled for T={self.lowered.unroll_T}, got T={T}")
        if phase == "bwd" and T != self.T:
            raise RuntimeError(f"the backward phase needs the forward phase's buffers for T={T} "
                               f"(run phase='fwd' first)")
        if T != self.T:
            self.store, self.T = allocate(self.prog, T), T
            if self.ws is None:     # packed weights + gemm scratch, 64-byte aligned
                # zeroed: a two-thread module keeps its barrier at the start
                raw = np.zeros(self.lowered.workspace + 64, np.uint8)
                self.ws = raw[-raw.ctypes.data % 64:][:max(self.lowered.workspace, 1)]
            self.ptrs = [self.store[n].ctypes.data for n in self.lowered.arg_names] + \
                [self.ws.ctypes.data]
        elif zero and phase != "bwd":
            for n, a in self.store.items():
                if n not in inputs:
                    a.fill(0)
        # arrays read in place: a backward phase keeps the forward phase's
        bound = dict(self.bound) if phase == "bwd" else {}
        for name, value in inputs.items():
            if name not in self.store:
                raise KeyError(f"no buffer named {name!r}")
            dst = user_view(self.prog, self.store, name)
            if np.shape(value) != dst.shape:
                raise ValueError(f"{name} has shape {np.shape(value)}, buffer is {dst.shape}")
            if self._bindable(name, value, phase, borrow):
                bound[name] = value
            else:
                _copy_in(dst, value)
        ptrs = self.ptrs
        if bound:
            ptrs = list(ptrs)
            for n, v in bound.items():
                if n in self.arg_index:     # a buffer the module never reads is no argument
                    ptrs[self.arg_index[n]] = v.ctypes.data
        if self.helper is None:
            self.fns[phase](T, *ptrs)
        else:
            other = self.helper.submit(self.fns[phase], T, *ptrs, 1)
            self.fns[phase](T, *ptrs, 0)
            other.result()
        self.bound = bound
        return _Views(self.prog, self.store, bound)

    def _bindable(self, name, value, phase, borrow):
        """Whether the program can read the caller's array in place instead of a copy: a
        contiguous array of the buffer's dtype and whole size that the program never writes.
        In a forward phase only when the caller promises (borrow) to leave the array alone until
        the backward phase has run, which reads the inputs again."""
        return (phase != "fwd" or borrow) and name not in self.written and \
            isinstance(value, np.ndarray) and value.flags.c_contiguous and \
            value.dtype == self.store[name].dtype and value.size == self.store[name].size


class _Views(Mapping):
    """Buffer name -> the live buffer in user shape (or the caller's array it read in place),
    made on lookup: a program has dozens of buffers and a caller reads a few."""

    def __init__(self, prog, store, bound):
        self.prog, self.store, self.bound = prog, store, bound

    def __getitem__(self, name):
        if name in self.bound:
            return self.bound[name]
        return user_view(self.prog, self.store, name)

    def __iter__(self):
        return iter(self.store)

    def __len__(self):
        return len(self.store)


class NativeProgram:
    """A Program compiled for the host CPU.

    NativeProgram(prog, unroll=False, T=None, opt=3, threads=1)
      unroll=True emits straight-line code for the given T (comparison only).
      threads=2 runs on two threads. split="cols": one module, two cooperating threads on
      every kernel, unless each thread's share of the loop products is below split_min_flops
      per step (default SPLIT_MIN_FLOPS; 0 forces the split): then everything runs in the
      calling thread. split="pipeline": one module, the loops on the calling thread while the
      other streams the hoisted products beside them (compiler/pipeline.py). split="auto"
      (default): "pipeline" when the loop products per step lie in PIPELINE_FLOPS and the
      threads' shares can be balanced (pipeline_fits), else "cols". split="batch":
      two instances on the batch halves (needs meta["batch"] >= 2; also what "cols" and
      "pipeline" fall back to without the kernel library).
      gemm: "auto" (the kernel library's packed GEMM everywhere; see compiler/lower.py),
      "llvm", "blas" (OpenBLAS for every product); "blas" falls back to "llvm" when numpy ships
      no OpenBLAS.
      library=False lowers a self-contained module (no shared kernel library; comparison only).
    run(T, inputs, zero=True, phase=None) -> {buffer name: array in user shape} (a read-only
      mapping whose arrays are made on lookup)
      phase="fwd" runs pre and the forward loop, phase="bwd" then the reverse loop and post on
      the same buffers (give d_out in between); None runs all four stages in one call.
      inputs: buffer name -> array ((T or T+1, rows, cols) for time-indexed buffers); buffers not
      given start at zero when zero=True (the numpy executor's semantics); zero=False skips that
      for programs that initialise everything they read (the graph side's contract). An input
      that is a contiguous array of the buffer's dtype, for a buffer the program only reads, is
      read in place instead of copied (in a forward phase only with borrow=True: the caller then
      leaves it unchanged until the backward phase has run). The returned arrays are the live
      buffers (single-thread mode): copy before the next call.
      With threads=2, batch-major buffers are concatenated, "grad" buffers summed and "temp"
      buffers left out.
    """

    def __init__(self, prog: Program, *, unroll=False, T=None, opt=3, threads=1,
                 gemm="auto", library=True, split_min_flops=None, split="auto"):
        self.prog, self.threads, self.split_mode = prog, threads, split
        B = prog.meta.get("batch")
        if threads not in (1, 2):
            raise ValueError(f"threads must be 1 or 2, got {threads}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split == "auto":
            split = "pipeline" if threads == 2 and pipeline_fits(prog) else "cols"
            self.split_mode = split
        if threads == 2 and split in ("cols", "pipeline") and (not library or gemm == "blas"):
            split = self.split_mode = "batch"   # the column split lives in the kernel library
        if threads == 2 and split == "batch" and (B is None or B < 2):
            raise ValueError(f"threads=2 with split='batch' needs batch >= 2 to split the rows "
                             f"(batch={B}); use split='cols' or 'pipeline', or threads=1")
        floor = SPLIT_MIN_FLOPS if split_min_flops is None else split_min_flops
        if threads == 2 and split == "pipeline" and unroll:
            split = self.split_mode = "cols"    # the pipeline needs the loops as loops
        if threads == 2 and split != "pipeline" and (
                step_flops(prog) // 2 if split == "cols" else
                step_flops(with_batch(prog, B // 2))) < floor:
            threads = self.threads = 1      # halves too small to pay for the split
        if threads == 1 or split in ("cols", "pipeline"):
            self.parts = [_Instance(prog, unroll, T, opt, gemm, library, threads,
                                    split if threads == 2 and split == "pipeline" else "cols")]
        else:
            b1 = B // 2
            first = _Instance(with_batch(prog, b1), unroll, T, opt, gemm, library)
            second = first if B - b1 == b1 else _Instance(with_batch(prog, B - b1), unroll, T,
                                                           opt, gemm, library)
            # Two halves need their own buffers even when the code is shared.
            self.parts = [first, _Instance.__new__(_Instance) if second is first else second]
            if second is first:
                self.parts[1].__dict__.update(first.__dict__, T=None, store=None, ptrs=None,
                                              ws=None)
            self.split = b1
            self._pool = ThreadPoolExecutor(1)
        self.lowered = self.parts[0].lowered
        self.cache_hit = all(p.cache_hit for p in self.parts)

    def run(self, T: int, inputs: dict, zero: bool = True, phase=None, borrow=False) -> dict:
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        if len(self.parts) == 1:
            return self.parts[0].run(T, inputs, zero, phase, borrow)
        halves = [{}, {}]
        cut = self.split
        for name, v in inputs.items():
            if name in self.prog.buffers and is_batched(self.prog, name):
                v = np.asarray(v)
                halves[0][name], halves[1][name] = v[..., :cut, :], v[..., cut:, :]
            else:
                halves[0][name] = halves[1][name] = v
        fut = self._pool.submit(self.parts[1].run, T, halves[1], zero, phase)
        r0 = self.parts[0].run(T, halves[0], zero, phase)   # the first half in this thread
        r1 = fut.result()
        out = {}
        for name, buf in self.prog.buffers.items():
            if buf.kind == "temp":
                continue    # scratch of the halves; merging it would only cost copies
            if is_batched(self.prog, name):
                out[name] = np.concatenate([r0[name], r1[name]], axis=-2)
            elif buf.kind == "grad":
                out[name] = r0[name] + r1[name]
            else:
                out[name] = r0[name].copy()
        return out
