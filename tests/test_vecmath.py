"""vecmath kernels vs a higher-precision numpy reference (max ulp is printed; -s)."""
import ctypes

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llvmlite import ir

from compiler.llvmlib import vecmath
from runtime import jit

OPS = ["exp", "expm1", "log", "tanh", "sigmoid", "relu"]
LD = np.longdouble
REF = {"exp": np.exp, "expm1": np.expm1, "log": np.log, "tanh": np.tanh,
       "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "relu": lambda x: np.maximum(x, 0)}
MAX_ULP = 3.0   # measured: <= 2.6 ulp for every op/dtype (docs/runtime.md)


@pytest.fixture(scope="module", params=["float32", "float64"])
def kernels(request):
    dt = request.param
    mod = ir.Module("vm_" + dt)
    mod.triple = jit.target_info().triple
    for op in OPS:
        vecmath.emit_unary_kernel(mod, op, op, dt)
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    lib = jit.jit(str(mod), {op: proto for op in OPS})

    def run(op, x):
        x = np.ascontiguousarray(x, dtype=dt)
        out = np.empty_like(x)
        lib[op](out.ctypes.data, x.ctypes.data, x.size)
        return out
    run.dtype = dt
    return run


def ulp_error(op, x, y):
    """Per-element error in units of the last place of the correctly rounded result."""
    with np.errstate(all="ignore"):
        ref = REF[op](x.astype(LD))
        rounded = ref.astype(x.dtype)
        same = (y == rounded) | (np.isnan(y) & np.isnan(rounded))
        ulp = np.spacing(np.abs(rounded)).astype(LD)
        err = np.where(same, 0, np.abs(y.astype(LD) - ref) / ulp)
    return np.where(np.isnan(err), np.inf, err).astype(np.float64)


def sample(dt, n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    if dt == "float32":  # uniform over bit patterns covers the whole float32 range
        x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    else:
        x = np.concatenate([rng.standard_normal(n // 5) * s for s in (1e-8, 0.1, 1, 30, 300)])
    return x[np.isfinite(x)].astype(dt)


SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 19.9, 20.0, 20.5, -20.5, 30.0, -30.0, 88.72, 88.73,
           -103.0, -104.0, 709.7, 709.8, -745.0, -746.0, 1e-30, -1e-30, 1e-40, 5e-324,
           np.inf, -np.inf, np.nan]


@pytest.mark.parametrize("op", OPS)
def test_accuracy(kernels, op):
    dt = kernels.dtype
    x = np.concatenate([sample(dt), np.array(SPECIAL, dtype=dt)])
    if op == "log":
        x = np.concatenate([np.abs(x), -np.abs(x[:100])])
    y = kernels(op, x)
    err = ulp_error(op, x, y)
    i = int(np.argmax(err))
    print(f"{dt} {op}: max {err[i]:.2f} ulp at x={x[i]!r}")
    assert err[i] <= MAX_ULP, (x[i], y[i])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(np.isnan(y), np.isnan(REF[op](x.astype(LD))))


def test_special_values(kernels):
    dt, inf, nan = kernels.dtype, np.inf, np.nan
    x = np.array([inf, -inf, nan, 1e4, -1e4, 25.0, -25.0, 0.0], dtype=dt)
    np.testing.assert_array_equal(kernels("exp", x), [inf, 0, nan, inf, 0, np.exp(LD(25)).astype(dt),
                                                      np.exp(LD(-25)).astype(dt), 1])
    np.testing.assert_array_equal(kernels("tanh", x), [1, -1, nan, 1, -1, 1, -1, 0])
    np.testing.assert_array_equal(kernels("sigmoid", x)[[0, 1, 2, 3, 4, 7]], [1, 0, nan, 1, 0, .5])
    np.testing.assert_array_equal(kernels("log", np.array([0, -1, inf, nan, 1], dt)),
                                  [-inf, nan, inf, nan, 0])
    np.testing.assert_array_equal(kernels("relu", np.array([-2, 3, nan], dt)), [0, 3, nan])
    assert np.signbit(kernels("tanh", np.array([-0.0], dt))[0])


def test_subnormal_range(kernels):
    dt = kernels.dtype
    tiny = np.finfo(dt).tiny
    x = np.geomspace(tiny * 2.0 ** -20, tiny * 4, 5000).astype(dt)
    for op in ("log", "tanh", "expm1"):
        assert ulp_error(op, x, kernels(op, x)).max() <= MAX_ULP, op
    lo = np.log(LD(tiny)) - 20
    xe = np.linspace(lo, lo + 25, 5000).astype(dt)   # exp results go subnormal, then 0
    assert ulp_error("exp", xe, kernels("exp", xe)).max() <= MAX_ULP


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(width=32), min_size=1, max_size=70))
def test_hypothesis_float32(kernels, values):
    if kernels.dtype != "float32":
        return
    x = np.array(values, dtype=np.float32)
    for op in OPS:
        assert ulp_error(op, x, kernels(op, x)).max() <= MAX_ULP, op


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-800, max_value=800) | st.floats(), min_size=1, max_size=40))
def test_hypothesis_float64(kernels, values):
    if kernels.dtype != "float64":
        return
    x = np.array(values, dtype=np.float64)
    for op in OPS:
        y = kernels(op, x)
        assert ulp_error(op, x, y).max() <= MAX_ULP, op
        with np.errstate(all="ignore"):
            ref = REF[op](x)
        fin = np.isfinite(ref) & (np.abs(ref) > 1e-300)
        np.testing.assert_allclose(y[fin], ref[fin], rtol=1e-14)   # BPTT needs 1e-10


def test_scalar_and_narrow_vectors():
    mod = ir.Module("narrow")
    mod.triple = jit.target_info().triple
    vecmath.emit_unary_kernel(mod, "t4", "tanh", "float32", width=4)
    vecmath.emit_unary_kernel(mod, "e2", "exp", "float64", width=2)
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    lib = jit.jit(str(mod), {"t4": proto, "e2": proto})
    for name, op, dt in (("t4", "tanh", np.float32), ("e2", "exp", np.float64)):
        x = np.linspace(-30, 30, 23).astype(dt)   # 23: exercises the scalar tail
        y = np.empty_like(x)
        lib[name](y.ctypes.data, x.ctypes.data, x.size)
        assert ulp_error(op, x, y).max() <= MAX_ULP


def test_rejects_integers():
    b = ir.IRBuilder(ir.Function(ir.Module(), ir.FunctionType(ir.VoidType(), []), "f")
                     .append_basic_block())
    with pytest.raises(TypeError):
        vecmath.exp(b, ir.Constant(ir.IntType(32), 1))
