"""Emitted GEMM kernels (and the OpenBLAS forwarders) against numpy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llvmlite import ir

from compiler.llvmlib import gemm
from runtime import jit

VARIANTS = [(False, False), (True, False), (False, True)]   # NN, TN (X^T @ dG), NT (h @ W^T)
DTYPES = ["float32", "float64"]
SIZES = [(1, 1, 1), (1, 256, 64), (5, 33, 7), (6, 64, 16), (16, 256, 64), (17, 50, 19),
         (3, 17, 100), (64, 48, 1), (13, 129, 31), (2, 1, 300)]


def _name(prefix, dt, ta, tb, acc):
    return f"{prefix}_{dt}_{int(ta)}{int(tb)}{int(acc)}"


@pytest.fixture(scope="module")
def lib():
    mod = ir.Module("gemm_test")
    mod.triple = jit.target_info().triple
    names = []
    for dt in DTYPES:
        for ta, tb in VARIANTS:
            for acc in (False, True):
                names.append(_name("own", dt, ta, tb, acc))
                gemm.emit_gemm(mod, names[-1], dt, ta, tb, acc)
        names.append(_name("blas", dt, False, True, True))
        gemm.emit_blas_gemm(mod, names[-1], dt, False, True, True)
    return jit.jit(str(mod), {n: gemm.gemm_ctypes() for n in names},
                   externals=gemm.blas_externals())


def run(lib, name, dt, ta, tb, acc, M, N, K, pad=3, seed=0):
    """Call with leading dimensions larger than the logical sizes (padding)."""
    rng = np.random.default_rng(seed)
    Afull = rng.standard_normal((K, M + pad) if ta else (M, K + pad)).astype(dt)
    Bfull = rng.standard_normal((N, K + pad) if tb else (K, N + pad)).astype(dt)
    Cfull = rng.standard_normal((M, N + pad)).astype(dt)
    A = Afull[:, :M] if ta else Afull[:, :K]
    B = Bfull[:, :K] if tb else Bfull[:, :N]
    C0 = Cfull.copy()
    lib[name](Afull.ctypes.data, Bfull.ctypes.data, Cfull.ctypes.data, M, N, K,
              Afull.shape[1], Bfull.shape[1], Cfull.shape[1])
    ref = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
    if acc:
        ref += C0[:, :N]
    tol = 1e-5 if dt == "float32" else 1e-12
    np.testing.assert_allclose(Cfull[:, :N], ref, rtol=tol, atol=tol * np.sqrt(K))
    np.testing.assert_array_equal(Cfull[:, N:], C0[:, N:])   # padding untouched


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("ta,tb", VARIANTS, ids=["nn", "tn", "nt"])
@pytest.mark.parametrize("acc", [False, True], ids=["set", "acc"])
def test_gemm_sizes(lib, dt, ta, tb, acc):
    for M, N, K in SIZES:
        run(lib, _name("own", dt, ta, tb, acc), dt, ta, tb, acc, M, N, K)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(DTYPES), st.sampled_from(VARIANTS), st.booleans(),
       st.integers(1, 40), st.integers(1, 80), st.integers(0, 70))
def test_gemm_hypothesis(lib, dt, var, acc, M, N, K):
    run(lib, _name("own", dt, *var, acc), dt, *var, acc, M, N, K)


@pytest.mark.parametrize("dt", DTYPES)
def test_blas_forwarder(lib, dt):
    run(lib, _name("blas", dt, False, True, True), dt, False, True, True, 7, 40, 33)


def test_both_transposed_rejected():
    with pytest.raises(NotImplementedError):
        gemm.emit_gemm(ir.Module(), "tt", "float32", True, True)


def test_prefer_blas_rule():
    assert not gemm.prefer_blas("float32", 1, 4096, 1024, trans_b=True)
    assert gemm.prefer_blas("float32", 3200, 1024, 256, trans_b=True)
    assert gemm.prefer_blas("float32", 256, 1024, 3200, trans_a=True)


def test_gemm_asm_uses_zmm_fma():
    mod = ir.Module("asm")
    mod.triple = jit.target_info().triple
    gemm.emit_gemm(mod, "k", "float32", False, False)
    asm = jit.emit_asm(str(mod))
    assert "zmm" in asm and "vfmadd" in asm


# --- the kernel library's packed GEMM (compiler/llvmlib/pgemm.py) ---
# M around MR=6 and MC=192 (both loop orders), K across KC_P=128 and KC=256, N across the
# 64/32-column panels and the f64 chunk of 512 columns.
PSIZES = [(1, 1, 1), (5, 33, 7), (6, 64, 16), (13, 129, 300), (200, 70, 129), (7, 530, 3),
          (193, 1, 257), (64, 148, 37)]


@pytest.fixture(scope="module")
def plib(tmp_path_factory):
    import ctypes
    from compiler.llvmlib import pgemm
    from runtime import library
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHGRAD_CACHE_DIR", str(tmp_path_factory.mktemp("libcache")))
    P, I = ctypes.c_void_p, ctypes.c_int64
    fns = {}
    for dt in DTYPES:
        lo = library.loaded(dt)
        t = pgemm.tag(dt)
        fns[dt] = (ctypes.CFUNCTYPE(None, P, I, I, P, I, I, P, I, I, I, I, I, P, I)(
            lo.address(f"gg_gemm_{t}")),
            ctypes.CFUNCTYPE(None, P, I, I, I, I, P)(lo.address(f"gg_prepack_{t}")))
    yield fns
    mp.undo()


def prun(plib, dt, ta, tb, acc, packed, M, N, K, seed=0):
    from compiler.llvmlib import pgemm
    rng = np.random.default_rng(seed)
    Afull = rng.standard_normal((K, M + 2) if ta else (M, K + 2)).astype(dt)
    Bfull = rng.standard_normal((N, K + 3) if tb else (K, N + 3)).astype(dt)
    Cfull = rng.standard_normal((M, N + 5)).astype(dt)
    A = Afull[:, :M] if ta else Afull[:, :K]
    B = Bfull[:, :K] if tb else Bfull[:, :N]
    C0 = Cfull.copy()
    gemm_fn, prepack = plib[dt]
    ws = np.full(pgemm.workspace_elems(dt), np.nan, dt)
    sai, sak = (1, Afull.shape[1]) if ta else (Afull.shape[1], 1)
    ldb = Bfull.shape[1]
    if packed:
        Bp = np.full(pgemm.packed_elems(dt, K, N), np.nan, dt)
        prepack(Bfull.ctypes.data, ldb, int(tb), K, N, Bp.ctypes.data)
        gemm_fn(Afull.ctypes.data, sai, sak, Bp.ctypes.data, 0, 0, Cfull.ctypes.data,
                Cfull.shape[1], M, N, K, int(acc), 0, 1)
    else:
        gemm_fn(Afull.ctypes.data, sai, sak, Bfull.ctypes.data, ldb, int(tb), Cfull.ctypes.data,
                Cfull.shape[1], M, N, K, int(acc), ws.ctypes.data, 0)
    ref = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
    if acc:
        ref += C0[:, :N]
    tol = 1e-5 if dt == "float32" else 1e-12
    np.testing.assert_allclose(Cfull[:, :N], ref, rtol=tol, atol=tol * np.sqrt(K))
    np.testing.assert_array_equal(Cfull[:, N:], C0[:, N:])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("ta,tb", VARIANTS, ids=["nn", "tn", "nt"])
@pytest.mark.parametrize("packed", [False, True], ids=["pack", "prepacked"])
def test_packed_gemm_sizes(plib, dt, ta, tb, packed):
    for i, (M, N, K) in enumerate(PSIZES):
        prun(plib, dt, ta, tb, i % 2 == 1, packed, M, N, K, seed=i)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(DTYPES), st.sampled_from(VARIANTS), st.booleans(), st.booleans(),
       st.integers(1, 40), st.integers(1, 80), st.integers(1, 300))
def test_packed_gemm_hypothesis(plib, dt, var, acc, packed, M, N, K):
    prun(plib, dt, *var, acc, packed, M, N, K)


def test_packed_gemm_large_chunks(plib):
    prun(plib, "float32", False, False, True, False, 20, 1100, 40)   # N past one f32 chunk


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("ta,tb", VARIANTS, ids=["nn", "tn", "nt"])
def test_prepacked_operands_past_l2_size(plib, dt, ta, tb):
    """Prepacked operands over PF_NEXT_BYTES take the kernels that fetch the next panel ahead;
    row counts cover one and several row blocks per panel and both loop orders."""
    from compiler.llvmlib import pgemm
    K, N = 300, 1100
    assert pgemm.packed_elems(dt, K, N) * np.dtype(dt).itemsize > pgemm.PF_NEXT_BYTES
    for i, M in enumerate((1, 5, 17, 200)):
        prun(plib, dt, ta, tb, i % 2 == 1, True, M, N, K, seed=i)


def test_next_panel_prefetch_is_emitted_for_big_prepacked_operands():
    from compiler.llvmlib import library
    text = str(library.build("float32"))
    body = text[text.index("define internal void @\"gg_mk_v16f32_6_pf\""):]
    body = body[:body.index("\n}")]
    # llvm.prefetch(ptr, rw=0, locality=2, data): into L2, not L1
    assert "i32 0, i32 2, i32 1)" in body
    gemm = text[text.index("define void @\"gg_gemm_f32\""):]
    assert '@"gg_mk_v16f32_6_pf"' in gemm[:gemm.index("\n}")]
