"""Register-blocked AVX-512 GEMM emitted as LLVM IR, plus calls into numpy's OpenBLAS.

C[M,N] (+)= op(A)[M,K] @ op(B)[K,N], row-major, leading dimensions in elements.
Emitted function signature (all variants):
    void name(ptr A, ptr B, ptr C, i64 M, i64 N, i64 K, i64 lda, i64 ldb, i64 ldc)

Two micro-kernel shapes, chosen by where B is contiguous:
* B not transposed (NN, TN: dH @ W, X^T @ dG): C rows are vectors along N;
  each k step loads NV vectors of B's row k and broadcasts MR scalars of A, so
  MR*NV FMA accumulators stay in zmm registers. A is read through (row, col)
  strides, which makes op(A) = A^T free. The N tail uses masked loads/stores.
* B transposed (NT: h @ W^T): both A rows and W rows are contiguous along K, so
  the kernel keeps MR x NR dot products as K-direction vectors and reduces each
  once at the end. The K tail is one masked step.
No packing or cache blocking yet: that keeps the per-step products (few rows) free
of copy overhead, but big products are slower than OpenBLAS, so prefer_blas()
routes them there (measurements in docs/runtime.md).
"""
from __future__ import annotations

import ctypes
import glob
import os

from llvmlite import ir

from compiler.llvmlib.vecops import I32, I64, PTR, VecOps, i64, loop

GEMM_ARGS = ("A", "B", "C", "M", "N", "K", "lda", "ldb", "ldc")


def gemm_ctypes():
    """ctypes prototype of an emitted gemm function."""
    return ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 6)


class _Kit(VecOps):
    """The GEMM kernels' vectors: one zmm register of dtype (16 float32 or 8 float64 lanes)."""

    def __init__(self, module, dtype):
        f64 = dtype == "float64"
        super().__init__(module, ir.DoubleType() if f64 else ir.FloatType(), 8 if f64 else 16)


def _new_fn(kit, name, nargs):
    fn = ir.Function(kit.mod, ir.FunctionType(ir.VoidType(), [PTR] * 3 + [I64] * nargs),
                     name=name)
    fn.linkage = "internal"
    for a in fn.args[:3]:
        a.add_attribute("noalias")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _store_tile(kit, b, accumulate, p, v, mask=None):
    if accumulate:
        v = b.fadd(v, kit.vload(b, p, mask))
    kit.vstore(b, v, p, mask)


def _mk_rowvec(kit, mr, nv, masked, accumulate):
    """C[0:mr, 0:nv*W] (+)= A[0:mr, :] @ B[:, 0:nv*W]; last vector masked if asked."""
    name = f"gg_mk_rv_{kit.tag}_{mr}x{nv}{'m' if masked else ''}{'_acc' if accumulate else ''}"
    if name in kit.mod.globals:
        return kit.mod.globals[name]
    fn, b = _new_fn(kit, name, 6)
    A, B, C, K, sai, sak, ldb, ldc, nrem = fn.args
    mask = kit.mask(b, nrem) if masked else None
    zero = ir.Constant(kit.vty, 0.0)

    def body(k, accs):
        brow = kit.gep(b, B, b.mul(k, ldb))
        bv = [kit.vload(b, kit.gep(b, brow, i64(v * kit.w)), mask if v == nv - 1 else None)
              for v in range(nv)]
        ak = b.mul(k, sak)
        out = []
        for i in range(mr):
            a = b.load(kit.gep(b, A, b.add(ak, b.mul(i64(i), sai))), typ=kit.fty)
            av = kit.splat(b, a)
            out += [kit.fma(b, av, bv[v], accs[i * nv + v]) for v in range(nv)]
        return out

    accs = loop(b, i64(0), K, i64(1), body, [zero] * (mr * nv))
    for i in range(mr):
        crow = kit.gep(b, C, b.mul(i64(i), ldc))
        for v in range(nv):
            _store_tile(kit, b, accumulate, kit.gep(b, crow, i64(v * kit.w)), accs[i * nv + v],
                        mask if v == nv - 1 else None)
    b.ret_void()
    return fn


def _mk_dot(kit, mr, nr, accumulate):
    """C[0:mr, 0:nr] (+)= A[0:mr, :] @ Bt[0:nr, :]^T with K-direction vector accumulators."""
    name = f"gg_mk_dot_{kit.tag}_{mr}x{nr}{'_acc' if accumulate else ''}"
    if name in kit.mod.globals:
        return kit.mod.globals[name]
    fn, b = _new_fn(kit, name, 4)
    A, Bt, C, K, lda, ldb, ldc = fn.args
    zero = ir.Constant(kit.vty, 0.0)
    kfull = b.mul(b.sdiv(K, i64(kit.w)), i64(kit.w))
    arows = [kit.gep(b, A, b.mul(i64(i), lda)) for i in range(mr)]
    brows = [kit.gep(b, Bt, b.mul(i64(j), ldb)) for j in range(nr)]

    def step(k, accs, mask=None):
        av = [kit.vload(b, kit.gep(b, r, k), mask) for r in arows]
        bv = [kit.vload(b, kit.gep(b, r, k), mask) for r in brows]
        return [kit.fma(b, av[i], bv[j], accs[i * nr + j]) for i in range(mr) for j in range(nr)]

    accs = loop(b, i64(0), kfull, i64(kit.w), step, [zero] * (mr * nr))
    # The K tail is one masked step; with an all-false mask it reads nothing.
    accs = step(kfull, accs, kit.mask(b, b.sub(K, kfull)))
    for i in range(mr):
        for j in range(nr):
            s = kit.hsum(b, accs[i * nr + j])
            p = kit.gep(b, C, b.add(b.mul(i64(i), ldc), i64(j)))
            if accumulate:
                s = b.fadd(s, b.load(p, typ=kit.fty))
            b.store(s, p)
    b.ret_void()
    return fn


def _row_blocks(b, M, mr_max, call):
    """call(i0, mr) over row blocks of mr_max, then one call for the remainder."""
    mfull = b.mul(b.sdiv(M, i64(mr_max)), i64(mr_max))
    loop(b, i64(0), mfull, i64(mr_max), lambda i, _: call(i, mr_max))
    if mr_max == 1:
        return
    fn = b.function
    done = fn.append_basic_block()
    sw = b.switch(b.sub(M, mfull), done)
    for mr in range(1, mr_max):
        blk = fn.append_basic_block()
        sw.add_case(i64(mr), blk)
        b.position_at_end(blk)
        call(mfull, mr)
        b.branch(done)
    b.position_at_end(done)


def emit_gemm(module: ir.Module, name: str, dtype: str = "float32", trans_a: bool = False,
              trans_b: bool = False, accumulate: bool = False, mr: int | None = None,
              nv: int | None = None) -> ir.Function:
    """Emit `name` computing C (+)= op(A) @ op(B); see the module docstring.

    trans_a: A is stored K x M (lda >= M); trans_b: B is stored N x K (ldb >= K).
    accumulate: C += product instead of C = product. mr/nv tune the register
    tile (rows x vectors) of the non-transposed-B kernel.
    """
    if trans_a and trans_b:
        raise NotImplementedError("op(A)=A^T with op(B)=B^T is not needed by BPTT")
    kit = _Kit(module, dtype)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * 3 + [I64] * 6), name=name)
    for a, n in zip(fn.args, GEMM_ARGS):
        a.name = n
    for a in fn.args[:3]:
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    A, B, C, M, N, K, lda, ldb, ldc = fn.args
    if trans_b:
        _emit_nt(kit, b, fn.args, accumulate)
    else:
        sai, sak = (i64(1), lda) if trans_a else (lda, i64(1))
        _emit_nn(kit, b, fn.args, sai, sak, accumulate, mr or 4, nv or 4)
    b.ret_void()
    return fn


def _emit_nn(kit, b, args, sai, sak, accumulate, mr_max, nv):
    A, B, C, M, N, K, lda, ldb, ldc = args
    w = kit.w

    def cols(j0, nvec, masked, nrem, rows_mr):
        def call(i0, mr):
            mk = _mk_rowvec(kit, mr, nvec, masked, accumulate)
            a0 = kit.gep(b, A, b.mul(i0, sai))
            c0 = kit.gep(b, C, b.add(b.mul(i0, ldc), j0))
            b.call(mk, [a0, kit.gep(b, B, j0), c0, K, sai, sak, ldb, ldc, nrem])
        _row_blocks(b, M, rows_mr, call)

    nr = nv * w
    nfull = b.mul(b.sdiv(N, i64(nr)), i64(nr))
    loop(b, i64(0), nfull, i64(nr), lambda j, _: cols(j, nv, False, i64(w), mr_max))
    n1 = b.add(nfull, b.mul(b.sdiv(b.sub(N, nfull), i64(w)), i64(w)))
    loop(b, nfull, n1, i64(w), lambda j, _: cols(j, 1, False, i64(w), mr_max))
    fn = b.function
    tail, done = fn.append_basic_block(), fn.append_basic_block()
    b.cbranch(b.icmp_signed("<", n1, N), tail, done)
    b.position_at_end(tail)
    cols(n1, 1, True, b.sub(N, n1), mr_max)
    b.branch(done)
    b.position_at_end(done)


def _emit_nt(kit, b, args, accumulate, mr_max=4, nr_max=4):
    A, Bt, C, M, N, K, lda, ldb, ldc = args

    def row_block(i0, mr):
        nr = nr_max if mr > 1 else 2 * nr_max  # one row: wider to use more accumulators

        def call(j0, n):
            mk = _mk_dot(kit, mr, n, accumulate)
            b.call(mk, [kit.gep(b, A, b.mul(i0, lda)), kit.gep(b, Bt, b.mul(j0, ldb)),
                        kit.gep(b, C, b.add(b.mul(i0, ldc), j0)), K, lda, ldb, ldc])
        nfull = b.mul(b.sdiv(N, i64(nr)), i64(nr))
        loop(b, i64(0), nfull, i64(nr), lambda j, _: call(j, nr))
        loop(b, nfull, N, i64(1), lambda j, _: call(j, 1))

    _row_blocks(b, M, mr_max, row_block)


# --- OpenBLAS shipped with numpy (scipy-openblas, ILP64, symbols suffixed 64_) ---

_BLAS_NAMES = {"float32": "scipy_cblas_sgemm64_", "float64": "scipy_cblas_dgemm64_"}
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def openblas_path() -> str:
    """The libscipy_openblas64_ shared object numpy links against."""
    import numpy
    site = os.path.dirname(os.path.dirname(numpy.__file__))
    hits = sorted(glob.glob(os.path.join(site, "numpy.libs", "libscipy_openblas64_*.so*")) +
                  glob.glob(os.path.join(site, "scipy_openblas64", "lib", "lib*.so*")))
    if not hits:
        raise FileNotFoundError("numpy's scipy-openblas library was not found")
    return hits[0]


def openblas() -> ctypes.CDLL:
    """numpy has already loaded the library, so this returns the same handle."""
    return ctypes.CDLL(openblas_path())


def blas_externals() -> dict[str, int]:
    """name -> address for runtime.jit.load(externals=...)."""
    lib = openblas()
    return {n: ctypes.cast(getattr(lib, n), ctypes.c_void_p).value
            for n in _BLAS_NAMES.values()}


def blas_set_threads(n: int) -> None:
    openblas().scipy_openblas_set_num_threads64_(int(n))


def blas_corename() -> str:
    f = openblas().scipy_openblas_get_corename64_
    f.restype = ctypes.c_char_p
    return f().decode()


def emit_blas_gemm_call(b: ir.IRBuilder, dtype, trans_a, trans_b, accumulate,
                        A, B, C, M, N, K, lda, ldb, ldc):
    """Emit a call to cblas ?gemm (row-major) with the same semantics as emit_gemm.

    M..ldc are i64 values. The object then needs blas_externals() at load time.
    """
    fty = ir.DoubleType() if dtype == "float64" else ir.FloatType()
    name = _BLAS_NAMES[dtype]
    fn = b.module.globals.get(name) or ir.Function(b.module, ir.FunctionType(
        ir.VoidType(), [I32] * 3 + [I64] * 3 + [fty, PTR, I64, PTR, I64, fty, PTR, I64]),
        name=name)
    t = lambda f: ir.Constant(I32, _TRANS if f else _NO_TRANS)  # noqa: E731
    return b.call(fn, [ir.Constant(I32, _ROW_MAJOR), t(trans_a), t(trans_b), M, N, K,
                       ir.Constant(fty, 1.0), A, lda, B, ldb,
                       ir.Constant(fty, 1.0 if accumulate else 0.0), C, ldc])


def emit_blas_gemm(module: ir.Module, name: str, dtype="float32", trans_a=False,
                   trans_b=False, accumulate=False) -> ir.Function:
    """A function with emit_gemm's signature that forwards to OpenBLAS."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * 3 + [I64] * 6), name=name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    A, B, C, M, N, K, lda, ldb, ldc = fn.args
    emit_blas_gemm_call(b, dtype, trans_a, trans_b, accumulate, A, B, C, M, N, K, lda, ldb, ldc)
    b.ret_void()
    return fn


def prefer_blas(dtype: str, M: int, N: int, K: int, trans_a=False, trans_b=False) -> bool:
    """Which implementation to emit for a product of this size (True: OpenBLAS).

    From the single-thread measurements in docs/runtime.md: the own kernel wins
    or ties for the per-step recurrent products with few rows (no call/packing
    overhead, GEMV-like M=1 is several times faster for H >= 512); OpenBLAS'
    packed, cache-blocked kernels win for the big hoisted products.
    """
    if trans_a:
        return M * N * K > (1 << 20)
    if not trans_b:   # NN: the unpacked B stream loses once B leaves L2
        return not (M <= 16 and K * N <= (1 << 20))
    if M == 1:        # GEMV-like; OpenBLAS is 2-5x slower here for H >= 512
        return False
    return M > 16 or (dtype == "float64" and K * N > (1 << 20))


def _bench(dtype="float32", quick=False):
    """Print GFLOP/s of the own kernel vs OpenBLAS (1 thread) for the BPTT shapes."""
    import numpy as np

    from runtime import jit
    from runtime.timing import auto_inner, median_ms
    blas_set_threads(1)
    variants = [("nt", False, True), ("nn", False, False), ("tn", True, False)]
    mod = ir.Module("bench")
    mod.triple = jit.target_info().triple
    for v, ta, tb in variants:
        emit_gemm(mod, "own_" + v, dtype, ta, tb)
        emit_blas_gemm(mod, "blas_" + v, dtype, ta, tb)
    names = [p + v for v, _, _ in variants for p in ("own_", "blas_")]
    lib = jit.jit(str(mod), {n: gemm_ctypes() for n in names}, externals=blas_externals())
    shapes = [("nt", B, H, 4 * H) for H in (64, 128, 256, 512, 1024) for B in (1, 16, 32, 64)]
    shapes += [("nn", B, H, 4 * H) for H in (64, 256, 1024) for B in (1, 64)]
    shapes += [("nt", 3200, 256, 1024), ("nt", 3200, 512, 2048), ("tn", 256, 3200, 1024)]
    if quick:
        shapes = shapes[::4]
    rng = np.random.default_rng(0)
    print(f"# {dtype}, OpenBLAS core {blas_corename()}, 1 thread; GFLOP/s")
    print("| op | M | K | N | own | OpenBLAS |")
    print("|---|---|---|---|---|---|")
    for v, M, K, N in shapes:
        ta, tb = v[0] == "t", v[1] == "t"
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
        B = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
        C = np.zeros((M, N), dtype)
        args = (A.ctypes.data, B.ctypes.data, C.ctypes.data, M, N, K, A.shape[1],
                B.shape[1], N)
        res = []
        for p in ("own_", "blas_"):
            f = lib[p + v]
            call = lambda: f(*args)  # noqa: E731
            ms = median_ms(call, repeats=7, warmup=2, inner=auto_inner(call))
            res.append(2 * M * N * K / ms / 1e6)
        print(f"| {v} | {M} | {K} | {N} | {res[0]:.1f} | {res[1]:.1f} |", flush=True)


if __name__ == "__main__":
    import sys
    _bench(sys.argv[1] if len(sys.argv) > 1 else "float32", "--quick" in sys.argv)
