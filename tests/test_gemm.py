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
