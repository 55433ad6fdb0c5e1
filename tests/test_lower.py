"""Native code from compiler.lower against the numpy executor of the same Program."""
import numpy as np
import pytest

from compiler import sched_numpy
from compiler.lower import lower
from compiler.schedule import Buffer, Fused, Program, Ref
from runtime import jit
from runtime.program import NativeProgram
from tests.sched_fixtures import (PROGRAMS, assert_close, lstm_program, make_case, oracle,
                                  results)
from tests.sched_fixtures import private_cache  # noqa: F401  (autouse: this module's cache)

I, H = 5, 37          # 4H = 148: full 16/8-lane vectors plus a masked tail
CELLS = sorted(PROGRAMS)


# relu differs from tanh only in two body rows, so it runs at one batch size (compiles dominate).
@pytest.mark.parametrize("cell,B", [(c, b) for c in CELLS for b in (1, 3, 64)
                                    if c != "rnn_relu" or b == 3])
def test_native_matches_numpy_float64(cell, B):
    prog = PROGRAMS[cell](B, I, H, "float64")
    native = NativeProgram(prog)        # one module for every T
    for T in (1, 7, 100):
        _, inputs = make_case(cell, T, B, I, H, "float64", seed=T)
        assert_close(results(prog, native.run(T, inputs).get), oracle(prog, T, inputs), 1e-10)


@pytest.mark.parametrize("cell,B", [(c, 64) for c in CELLS] + [("lstm", 3)])
def test_native_matches_numpy_float32(cell, B):
    prog = PROGRAMS[cell](B, I, H, "float32")
    native = NativeProgram(prog)
    for T in (1, 100):
        _, inputs = make_case(cell, T, B, I, H, "float32", seed=T)
        want = oracle(prog, T, inputs)
        assert_close(results(prog, native.run(T, inputs).get), want, 1e-4)


def test_rerun_without_zeroing_and_with_new_T():
    prog = lstm_program(3, I, H)
    native = NativeProgram(prog)
    for T in (7, 7, 2, 7):
        _, inputs = make_case("lstm", T, 3, I, H, seed=T)
        assert_close(results(prog, native.run(T, inputs, zero=False).get),
                     oracle(prog, T, inputs), 1e-10)


@pytest.mark.parametrize("B", [1, 3, 64])
@pytest.mark.parametrize("split", ["cols", "batch"])
def test_two_threads(B, split):
    if split == "batch" and B == 1:
        with pytest.raises(ValueError, match="batch"):
            NativeProgram(lstm_program(B, I, H), threads=2, split="batch", split_min_flops=0)
        return
    prog = lstm_program(B, I, H)
    native = NativeProgram(prog, threads=2, split_min_flops=0, split=split)
    assert len(native.parts) == (1 if split == "cols" else 2)
    for T in (9, 9, 4):      # reruns: buffers and the barrier are reused
        _, inputs = make_case("lstm", T, B, I, H, seed=T)
        got = results(prog, native.run(T, inputs).get)
        assert_close(got, oracle(prog, T, inputs), 1e-10)


def test_two_threads_column_split_is_exact_and_phased():
    """threads=2 (column split) gives one thread's results bit for bit, also in two phases."""
    prog = lstm_program(5, I, H)
    _, inputs = make_case("lstm", 6, 5, I, H)
    one = NativeProgram(prog)
    two = NativeProgram(prog, threads=2, split_min_flops=0)
    want = {n: np.array(v) for n, v in one.run(6, inputs).items()}
    fwd_inputs = {n: v for n, v in inputs.items() if n != "d_out"}
    two.run(6, fwd_inputs, phase="fwd")
    got = two.run(6, {"d_out": inputs["d_out"]}, phase="bwd")
    for n, v in want.items():
        assert np.array_equal(v, got[n]), n


def test_two_threads_need_the_kernel_library():
    with pytest.raises(ValueError, match="threads=2 needs the kernel library"):
        lower(lstm_program(3, I, H), threads=2, library=False)
    with pytest.raises(ValueError, match="threads must be 1 or 2"):
        lower(lstm_program(3, I, H), threads=3)


def test_small_halves_run_unsplit():
    prog = lstm_program(4, I, H)
    native = NativeProgram(prog, threads=2)     # 2 x 37 x 148 per half-step: far below the floor
    assert native.threads == 1 and len(native.parts) == 1
    _, inputs = make_case("lstm", 5, 4, I, H)
    assert_close(results(prog, native.run(5, inputs).get), oracle(prog, 5, inputs), 1e-10)


def test_unrolled_matches_loop_and_loop_text_is_independent_of_T():
    prog = lstm_program(3, I, H)
    _, inputs = make_case("lstm", 7, 3, I, H)
    unrolled = NativeProgram(prog, unroll=True, T=7)
    assert_close(results(prog, unrolled.run(7, inputs).get), oracle(prog, 7, inputs), 1e-10)
    with pytest.raises(ValueError, match="unrolled for T=7"):
        unrolled.run(8, inputs)
    assert lower(prog).ir_text == lower(prog, T=50).ir_text
    small, big = (len(lower(prog, unroll=True, T=t).ir_text) for t in (2, 4))
    assert big > small > len(lower(prog).ir_text)


@pytest.mark.parametrize("gemm", ["llvm", "blas"])
def test_gemm_modes(gemm):
    prog = PROGRAMS["gru"](3, I, H)
    _, inputs = make_case("gru", 7, 3, I, H)
    native = NativeProgram(prog, gemm=gemm)
    assert ("gg_cblas_dgemm" in native.lowered.externals) == (gemm == "blas")
    assert_close(results(prog, native.run(7, inputs).get), oracle(prog, 7, inputs), 1e-10)


def test_assembly_is_avx512_fma():
    asm = jit.emit_asm(lower(lstm_program(8, 16, 32, "float32")).ir_text)
    assert "zmm" in asm and "vfmadd" in asm


def _fused_ir(ir_text):
    """The LLVM IR of the fused kernels alone (the GEMM library also prefetches)."""
    return [f for f in ir_text.split("\ndefine ") if '@"k_' in f.split("(")[0]]


@pytest.mark.parametrize("B,want", [(8, True), (1, False)])
def test_fused_kernels_prefetch_the_next_row(B, want):
    kernels = _fused_ir(lower(lstm_program(B, 16, 32, "float32")).ir_text)
    loop_kernels = [f for f in kernels if "_loop" in f.split("(")[0]]
    assert loop_kernels and all(("llvm.prefetch" in f) == want for f in loop_kernels)


def _all_ops_program(dtype, rows, cols):
    bufs = {"X": Buffer("X", dtype, (rows, cols + 3)), "P": Buffer("P", dtype, (rows, cols)),
            "r": Buffer("r", dtype, (cols,)), "s": Buffer("s", dtype, (2,)),
            "Y": Buffer("Y", dtype, (rows, 15 * cols)), "S": Buffer("S", dtype, (2 * cols,))}
    other = "float32" if dtype == "float64" else "float64"
    body = [("a", "add", ("in0", "in2"), ()), ("b", "sub", ("in0", 0.5), ()),
            ("c", "mul", ("in0", "in3"), ()), ("d", "div", ("in0", "in1"), ()),
            ("e", "neg", ("in0",), ()), ("f", "exp", ("in0",), ()), ("g", "log", ("in1",), ()),
            ("h", "tanh", ("in0",), ()), ("i", "sigmoid", ("in0",), ()),
            ("j", "relu", ("in0",), ()),
            ("k", "positive", ("in0",), ()), ("l", "equal", ("j", 0.0), ()),
            ("m", "pow", ("in1", "in2"), ()), ("n", "astype", ("in0",), (("dtype", other),)),
            ("o", "astype", ("n",), (("dtype", dtype),)), ("p", "stop_gradient", ("o",), ()),
            ("q", "greater", ("in0", "in2"), ()), ("r", "greater_equal", ("in0", 0.0), ()),
            ("s", "where", ("in0", "in1", "e"), ())]   # in0: zeros, NaN (selects in1)
    outs = [(name, Ref("Y", None, k * cols, cols)) for k, name in enumerate("abcdefghijkmqrs")]
    k = Fused("all_ops", ((Ref("X", None, 3, cols), "full"), (Ref("P"), "full"), (Ref("r"), "row"),
                          (Ref("s", None, 1, 1), "scalar")), tuple(body), tuple(outs),
              colsums=(("p", Ref("S", None, 0, cols), False), ("i", Ref("S", None, cols), True)))
    return Program(bufs, [k], [], [], [], {"batch": rows})


@pytest.mark.parametrize("special", [False, True], ids=["finite", "nan_inf"])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("cols", [5, 16, 37])
def test_every_lowered_op(dtype, rtol, cols, special):
    rng = np.random.default_rng(cols)
    rows = 3
    prog = _all_ops_program(dtype, rows, cols)
    inputs = {"X": 3 * rng.standard_normal((rows, cols + 3)),
              "P": rng.uniform(0.1, 3, (rows, cols)),
              "r": rng.standard_normal(cols), "s": rng.standard_normal(2),
              "S": rng.standard_normal(2 * cols)}
    inputs["X"][0, 3:6] = [0.0, -0.0, 0.0]     # positive/relu/equal/greater_equal at zero
    if special:    # comparisons with NaN are false, a NaN mask selects (as np.where)
        inputs["X"][1, 3:7] = [np.nan, np.inf, -np.inf, np.nan]
    inputs = {k: v.astype(dtype) for k, v in inputs.items()}
    store = sched_numpy.execute(prog, 1, inputs)
    got = NativeProgram(prog).run(1, inputs)
    for name in ("Y", "S"):
        np.testing.assert_allclose(got[name], sched_numpy.user_view(prog, store, name),
                                   rtol=rtol, atol=rtol, err_msg=name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pow_matches_numpy_on_every_sign_and_special_value(dtype):
    """exp(y log x) alone gives NaN for a negative base; numpy gives -8 for (-2)**3, NaN for
    (-2)**0.5, 1 for x**0 and 1**y. Constant small integer exponents are multiplications."""
    xs = np.array([-2.5, -2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 3.0, np.inf, -np.inf, np.nan])
    ys = np.array([-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 2.5, 7.0, np.nan])
    X, Y = [a.reshape(1, -1).astype(dtype) for a in np.meshgrid(xs, ys)]
    n = X.size
    consts = (2.0, 3.0, -1.0, -2.0, 0.0)
    bufs = {"X": Buffer("X", dtype, (1, n)), "P": Buffer("P", dtype, (1, n)),
            "Y": Buffer("Y", dtype, (1, (1 + len(consts)) * n))}
    body = [("m", "pow", ("in0", "in1"), ())] + [
        (f"c{k}", "pow", ("in0", c), ()) for k, c in enumerate(consts)]
    outs = [(name, Ref("Y", None, k * n, n)) for k, (name, *_) in enumerate(body)]
    k = Fused("pow", ((Ref("X"), "full"), (Ref("P"), "full")), tuple(body), tuple(outs))
    prog = Program(bufs, [k], [], [], [], {"batch": 1})
    got = NativeProgram(prog).run(1, {"X": X, "P": Y})["Y"].reshape(-1, n)
    with np.errstate(all="ignore"):
        want = [np.power(X, Y)] + [np.power(X, np.asarray(c, dtype)) for c in consts]
    rtol = 1e-13 if dtype == "float64" else 1e-5
    for row, w, name in zip(got, want, ["x**y"] + [f"x**{c:g}" for c in consts]):
        np.testing.assert_allclose(row, w.ravel(), rtol=rtol, atol=0, err_msg=name)


def test_library_gemm_many_rows_prepacked_weights_and_self_contained_mode():
    """T*B = 448 rows takes the many-rows loop order; the recurrent weight is packed once per
    call; library=False (inline kernels, no shared library) computes the same."""
    prog = PROGRAMS["lstm"](64, I, H, "float64")
    _, inputs = make_case("lstm", 7, 64, I, H, "float64", seed=5)
    want = oracle(prog, 7, inputs)
    native = NativeProgram(prog, gemm="llvm")
    ext = native.lowered.externals
    assert {"gg_gemm_f64", "gg_prepack_f64", "gg_vm_sigmoid_v8f64"} <= set(ext)
    assert native.lowered.workspace > 0
    assert_close(results(prog, native.run(7, inputs).get), want, 1e-10)
    alone = NativeProgram(prog, library=False)
    assert not [n for n in alone.lowered.externals if n.startswith(("gg_vm", "gg_gemm"))]
    assert_close(results(prog, alone.run(7, inputs).get), want, 1e-10)
