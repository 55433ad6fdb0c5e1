"""Tensor and tape semantics: accumulation, retain_grad, no_grad, tape()/record(), dtypes,
shape errors, anomaly detection."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import graphgrad as gg

RNG = np.random.default_rng(0)


def leaf(a, dtype=np.float64):
    return gg.Tensor(np.asarray(a, dtype=dtype), requires_grad=True)


# ---------------------------------------------------------------- gradient accumulation
A = RNG.standard_normal((2, 3))
W = RNG.standard_normal((3, 3))

SHARED = [  # (name, f(W tensor) -> scalar, analytic dL/dW)
    ("x*x+3x", lambda w: (w * w + 3.0 * w).sum(), lambda w: 2 * w + 3),
    ("w used as both operands", lambda w: (w * w).sum(), lambda w: 2 * w),
    ("A @ W @ W", lambda w: (gg.Tensor(A) @ w @ w).sum(),
     lambda w: A.T @ np.ones((2, 3)) @ w.T + (A @ w).T @ np.ones((2, 3))),
    ("three recurrent steps h = tanh(h @ W)", None, None),
    ("W and W.T", lambda w: (w @ w.T).sum(), lambda w: 2 * np.ones((3, 3)) @ w),
    ("broadcast row reused", lambda w: (w[0] * w).sum(),
     lambda w: np.tile(w[0], (3, 1)) + np.vstack([w.sum(0), np.zeros((2, 3))])),
]


def _three_steps(w):
    h = gg.Tensor(A)
    for _ in range(3):
        h = gg.tanh(h @ w)
    return h.sum()


def _three_steps_grad(w):
    hs = [A]
    for _ in range(3):
        hs.append(np.tanh(hs[-1] @ w))
    g, dw = np.ones_like(A), np.zeros_like(w)
    for t in range(3, 0, -1):
        pre = g * (1 - hs[t] ** 2)
        dw += hs[t - 1].T @ pre
        g = pre @ w.T
    return dw


SHARED[3] = (SHARED[3][0], _three_steps, _three_steps_grad)


@pytest.mark.parametrize("name, f, grad", SHARED, ids=[s[0] for s in SHARED])
def test_shared_weights_accumulate(name, f, grad):
    w = leaf(W)
    f(w).backward()
    np.testing.assert_allclose(w.grad, grad(W), rtol=1e-12, atol=1e-14)
    gg.gradcheck(f, [W], rtol=1e-6, atol=0.0)


def test_leaf_grad_accumulates_across_backward_calls():
    x = leaf([1.0, -2.0, 3.0])
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, -4.0, 6.0])
    (3.0 * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, -1.0, 9.0])
    x.grad = None                                  # the way optimizers zero it
    x.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0, 1.0])


def test_backward_twice_through_the_same_graph():
    x = leaf([0.5, 1.5])
    y = gg.exp(x).sum()
    y.backward()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * np.exp([0.5, 1.5]), rtol=1e-15)


def test_accumulated_grad_of_a_0d_leaf_stays_an_array():
    # regression: 0-d + 0-d is a numpy scalar, so after a second backward the grad of a scalar
    # parameter was np.float64: clip_grad_norm could not scale it in place (it silently stayed
    # unclipped) and zero_grad(set_to_none=False) raised
    from graphgrad import optim
    a = leaf(2.0)
    (a * a).backward()
    (a * a).backward()
    assert isinstance(a.grad, np.ndarray) and a.grad.shape == () and a.grad == 8.0
    assert optim.clip_grad_norm({"a": a}, 1.0) == 8.0
    np.testing.assert_allclose(a.grad, 1.0, rtol=1e-5)
    optim.SGD({"a": a}, lr=0.1).zero_grad(set_to_none=False)
    assert a.grad == 0.0


def test_transpose_accepts_negative_axes():
    # regression: numpy's negative axes were "not a permutation"
    x = np.arange(24.0).reshape(2, 3, 4)
    xt = leaf(x)
    y = xt.transpose(-1, 0, -2)
    np.testing.assert_array_equal(y.data, np.transpose(x, (-1, 0, -2)))
    y.backward(np.ones((4, 2, 3)))
    np.testing.assert_array_equal(xt.grad, np.ones_like(x))


def test_retain_grad():
    x = leaf([1.0, 2.0])
    z = x * 3.0
    kept = (z + 1.0).retain_grad()
    loss = (kept * kept).sum()
    loss.backward()
    assert z.grad is None                          # intermediates drop their grads by default
    np.testing.assert_array_equal(kept.grad, 2 * (3 * np.array([1.0, 2.0]) + 1))
    np.testing.assert_array_equal(x.grad, 3 * kept.grad)
    loss.backward()                                # retained grads accumulate like leaves
    np.testing.assert_array_equal(kept.grad, 4 * (3 * np.array([1.0, 2.0]) + 1))


def test_gradient_reaches_only_tensors_that_require_it():
    x, c = leaf([1.0, 2.0]), gg.Tensor(np.array([3.0, 4.0]))
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])
    with pytest.raises(TypeError, match="requires_grad.*int64"):
        gg.Tensor(np.arange(3), requires_grad=True)


# ---------------------------------------------------------------- no_grad, tape, record
def test_no_grad_records_nothing():
    x = leaf(np.ones((2, 2)))
    with gg.no_grad():
        assert not gg.is_grad_enabled()
        y = gg.tanh(x @ x) + x
        with gg.no_grad():
            pass
        assert not gg.is_grad_enabled()            # nesting restores the outer state
    assert gg.is_grad_enabled()
    assert not y.requires_grad and y.tape() == []
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()
    np.testing.assert_allclose(y.data, np.tanh(np.ones((2, 2)) * 2) + 1)
    with pytest.raises(ZeroDivisionError):
        with gg.no_grad():
            1 / 0
    assert gg.is_grad_enabled()                    # restored after an exception too


def test_tape_lists_ops_with_shapes():
    x, w, b = leaf(np.ones((2, 3))), leaf(np.ones((3, 4))), leaf(np.zeros(4))
    y = gg.tanh(x @ w + b).sum()
    tape = y.tape()
    assert [(e.op, [tuple(s) for s in e.in_shapes], tuple(e.out_shape), e.dtype) for e in tape] \
        == [("matmul", [(2, 3), (3, 4)], (2, 4), "float64"),
            ("add", [(2, 4), (4,)], (2, 4), "float64"),
            ("tanh", [(2, 4)], (2, 4), "float64"),
            ("sum", [(2, 4)], (), "float64")]
    assert tape[3].attrs == {"axis": (0, 1), "keepdims": False}
    assert repr(tape[0]) == "matmul([2, 3], [3, 4]) -> [2, 4] float64"
    # a branch of constants is not part of the tape; a reused tensor appears once
    c = gg.Tensor(np.ones(4)) * 2.0
    z = x @ w
    assert [e.op for e in ((z + c) * z).tape()] == ["matmul", "add", "mul"]


def test_record_collects_every_executed_primitive():
    x = leaf(np.ones((2, 3)))
    with gg.record() as outer:
        y = x.sum(axis=0)
        with gg.record() as inner, gg.no_grad():
            z = gg.exp(gg.Tensor(np.ones(2)))      # recorded even without grad
    _ = y * 2.0                                    # after the block: not recorded
    assert [e.op for e in outer] == ["sum", "exp"]
    assert [e.op for e in inner] == ["exp"]
    assert outer[0].in_shapes == [(2, 3)] and outer[0].out_shape == (3,)
    assert outer[0].attrs == {"axis": (0,), "keepdims": False} and z.shape == (2,)
    with gg.record() as rec:
        x.sum().backward()                         # the VJPs run primitives too
    assert [e.op for e in rec][:1] == ["sum"] and "broadcast_to" in [e.op for e in rec]


# ---------------------------------------------------------------- backward argument errors
@pytest.mark.parametrize("grad, match", [
    (None, r"shape \(2, 3\); pass grad="),
    (np.ones((3, 2)), r"grad has shape \(3, 2\)"),
    (np.ones((2, 3), np.float32), r"float32.*float64"),
])
def test_backward_argument_errors(grad, match):
    y = leaf(np.ones((2, 3))) * 2.0
    with pytest.raises(ValueError, match=match):
        y.backward(grad)


def test_backward_on_non_scalar_with_grad():
    x = leaf([1.0, 2.0])
    (x * x).backward(np.array([10.0, 1.0]))
    np.testing.assert_array_equal(x.grad, [20.0, 4.0])
    s = (x * 1.0).sum(keepdims=True)               # size-1 non-0-d output needs no grad
    s.backward()
    np.testing.assert_array_equal(x.grad, [21.0, 5.0])


# ---------------------------------------------------------------- dtypes
F32_OPS = [
    ("add", lambda x, y: x + y, np.add),
    ("sub", lambda x, y: x - y, np.subtract),
    ("mul", lambda x, y: x * y, np.multiply),
    ("div", lambda x, y: x / y, np.divide),
    ("pow", lambda x, y: x ** y, np.power),
    ("matmul", lambda x, y: x @ y.T, lambda a, b: a @ b.T),
    ("exp", lambda x, y: gg.exp(x), lambda a, b: np.exp(a)),
    ("log", lambda x, y: gg.log(y), lambda a, b: np.log(b)),
    ("tanh", lambda x, y: gg.tanh(x), lambda a, b: np.tanh(a)),
    ("relu", lambda x, y: gg.relu(x), lambda a, b: np.maximum(a, np.float32(0))),
    ("neg", lambda x, y: -x, np.negative),
    ("sum", lambda x, y: x.sum(axis=1), lambda a, b: a.sum(axis=1)),
    ("max", lambda x, y: x.max(axis=0), lambda a, b: a.max(axis=0)),
    ("scalar ops", lambda x, y: 2.0 - x * 3.0 + x / 4.0, lambda a, b: np.float32(2) - a *
     np.float32(3) + a / np.float32(4)),
    ("square", lambda x, y: x ** 2, lambda a, b: a ** np.float32(2)),
]


@pytest.mark.parametrize("name, f, ref", F32_OPS, ids=[o[0] for o in F32_OPS])
@settings(max_examples=10)
@given(x=hnp.arrays(np.float32, (3, 4), elements=st.floats(-3, 3, width=32)),
       y=hnp.arrays(np.float32, (3, 4), elements=st.floats(0.25, 3, width=32)))
def test_float32_forward_equals_numpy_float32(name, f, ref, x, y):
    out = f(leaf(x, np.float32), leaf(y, np.float32))
    with np.errstate(invalid="ignore"):     # pow of a negative base: NaN on both sides
        want = ref(x, y)
    assert out.dtype == np.float32 and want.dtype == np.float32
    np.testing.assert_array_equal(out.data, want)
    out.backward(np.ones(out.shape, np.float32))   # gradients stay float32 too


def test_float32_sigmoid_and_grads_stay_float32():
    x = leaf(np.linspace(-30, 30, 7), np.float32)
    s = gg.sigmoid(x)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s.data, 1 / (1 + np.exp(-x.data.astype(np.float64))), rtol=1e-6)
    (s * s).sum().backward()
    assert x.grad.dtype == np.float32


@pytest.mark.parametrize("f, op", [
    (lambda a, b: a + b, "add"),
    (lambda a, b: a * b.data, "mul"),              # a float64 ndarray is no exception
    (lambda a, b: b.data - a, "sub"),
    (lambda a, b: a.reshape(1, 3) @ b.reshape(3, 1), "matmul"),
    (lambda a, b: gg.concat([a, b]), "concat"),
    (lambda a, b: gg.power(b, a), "pow"),
])
def test_mixing_float32_and_float64_is_a_type_error(f, op):
    a, b = leaf(np.ones(3), np.float32), leaf(np.ones(3), np.float64)
    with pytest.raises(TypeError) as info:
        f(a, b)
    msg = str(info.value)
    assert msg.startswith(op + ":") and "float32" in msg and "float64" in msg, msg
    assert "astype" in msg
    # explicit conversion is the way
    out = f(gg.astype(a, np.float64), b)
    assert out.dtype == np.float64


def test_integer_operands_are_rejected_not_cast():
    with pytest.raises(TypeError, match=r"tanh: expects float32 or float64.*int64"):
        gg.tanh(gg.Tensor(np.arange(3)))
    assert (leaf([1.0, 2.0], np.float32) + 1).dtype == np.float32   # Python scalars adapt
    # numpy scalars too, integer ones included (x * np.int64(2) was a TypeError)
    assert (leaf([1.0, 2.0], np.float32) * np.int64(2)).dtype == np.float32
    np.testing.assert_array_equal((np.int64(3) - leaf([1.0, 2.0])).data, [2.0, 1.0])


def test_numpy_ufuncs_stay_on_the_tape_or_refuse():
    # regression: np.exp(t) made an object array of per-element Tensors, off the tape
    x = leaf([0.5, -1.0, 2.0])
    for y in (np.exp(x), np.tanh(np.ones(3) * x), np.log(np.exp(x)), np.negative(x) ** 2.0):
        assert isinstance(y, gg.Tensor)
    (np.exp(x) + np.matmul(np.ones((1, 3)), gg.reshape(x, (3, 1)))).sum().backward()
    np.testing.assert_allclose(x.grad, np.exp(x.data) + 3.0, rtol=1e-15)   # (1, 1) term x3
    with pytest.raises(TypeError, match=r"np.sqrt on a graphgrad Tensor .*no gradient"):
        np.sqrt(x)
    with pytest.raises(TypeError, match=r"np.add.reduce on a graphgrad Tensor"):
        np.add.reduce(x)
    with pytest.raises(TypeError, match=r"np.exp on a graphgrad Tensor"):
        np.exp(x, out=np.empty(3))
    # boolean ufuncs carry no gradient: they compare the values (they raised after the change)
    np.testing.assert_array_equal(np.array([0.5, 0.0, 2.0]) == x, [True, False, True])
    np.testing.assert_array_equal(np.isnan(x), [False, False, False])


# ---------------------------------------------------------------- shape errors
@pytest.mark.parametrize("f, exc, pattern", [
    (lambda: gg.Tensor(np.ones((2, 3))) @ gg.Tensor(np.ones((4, 5))), ValueError,
     r"^matmul: .*\[2, 3\] @ \[4, 5\]"),
    (lambda: gg.Tensor(np.ones(3)) @ gg.Tensor(np.ones((3, 2))), ValueError,
     r"^matmul: .*at least 2-d.*\[3\] @ \[3, 2\]"),
    (lambda: gg.Tensor(np.ones((2, 2, 3))) @ gg.Tensor(np.ones((3, 3, 1))), ValueError,
     r"^matmul: batch .*\[2, 2, 3\] and \[3, 3, 1\]"),
    (lambda: gg.Tensor(np.ones((2, 3))) + gg.Tensor(np.ones(4)), ValueError,
     r"^add: shapes \[2, 3\] and \[4\] do not broadcast"),
    (lambda: gg.Tensor(np.ones((2, 3))) * np.ones((3, 2)), ValueError,
     r"^mul: shapes \[2, 3\] and \[3, 2\]"),
    (lambda: gg.Tensor(np.ones((2, 3))).reshape(4), ValueError,
     r"^reshape: cannot reshape \[2, 3\] to \[4\]"),
    (lambda: gg.concat([gg.Tensor(np.ones((2, 3))), gg.Tensor(np.ones((3, 2)))]), ValueError,
     r"^concat: shapes \[\[2, 3\], \[3, 2\]\] differ off axis 0"),
    (lambda: gg.concat([gg.Tensor(np.ones((2, 3))), gg.Tensor(np.ones(3))], 1), ValueError,
     r"^concat: .*\[2, 3\], \[3\]"),
    (lambda: gg.Tensor(np.ones((2, 3)))[5], IndexError,
     r"^getitem: index \(5,\) does not fit shape \[2, 3\]"),
    (lambda: gg.Tensor(np.ones((2, 3)))[0, 0, 0], IndexError, r"^getitem: .*shape \[2, 3\]"),
    (lambda: gg.Tensor(np.ones((2, 3)))[np.array([0, 1])], TypeError, r"^getitem: .*take\(\)"),
    (lambda: gg.broadcast_to(gg.Tensor(np.ones((2, 3))), (3, 3)), ValueError,
     r"^broadcast_to: cannot broadcast \[2, 3\] to \[3, 3\]"),
    (lambda: gg.transpose(gg.Tensor(np.ones((2, 3))), (0, 0)), ValueError,
     r"^transpose: axes \(0, 0\)"),
    (lambda: gg.Tensor(np.ones((2, 3))).sum(axis=2), ValueError, r"^sum: axis 2 .*2-d"),
    # regressions: the error showed a shape made up from the -1 ([4, 1], [6, 6]), not the request
    (lambda: gg.Tensor(np.ones((2, 3))).reshape(4, -1), ValueError,
     r"^reshape: cannot reshape \[2, 3\] to \[4, -1\]"),
    (lambda: gg.Tensor(np.ones((2, 3))).reshape(-1, -1), ValueError,
     r"^reshape: cannot reshape \[2, 3\] to \[-1, -1\]"),
    (lambda: gg.transpose(gg.Tensor(np.ones((2, 3))), (0, -3)), ValueError,
     r"^transpose: axes \(0, -3\)"),
])
def test_bad_shapes_name_the_op_and_shapes(f, exc, pattern):
    # NOTE getitem raises IndexError (as numpy and torch do), not ValueError.
    with pytest.raises(exc) as info:
        f()
    assert re.search(pattern, str(info.value)), str(info.value)


# ---------------------------------------------------------------- anomaly detection
def test_anomaly_names_the_forward_op_that_made_nan():
    x = leaf([-1.0, 1.0])
    with gg.detect_anomaly():
        with pytest.raises(FloatingPointError, match=r"forward of log .*\[\(2,\)\]"):
            gg.exp(gg.log(x) * 2.0)                # log makes the NaN; exp is never reached
        with pytest.raises(FloatingPointError, match="forward of div"):
            gg.Tensor(np.array([1.0])) / gg.Tensor(np.array([0.0]))
        y = gg.tanh(x) * 2.0                       # finite: no exception in anomaly mode
    np.testing.assert_allclose(y.data, 2 * np.tanh([-1.0, 1.0]))


def test_anomaly_names_the_backward_op_that_made_inf():
    x = leaf([0.0, 4.0])
    with gg.detect_anomaly():
        y = (gg.tanh(x ** 0.5) * 3.0).sum()        # forward is finite: sqrt(0) = 0
        with pytest.raises(FloatingPointError, match=r"^anomaly: backward of pow .*argument 0"):
            y.backward()


def test_anomaly_in_the_middle_of_the_backward_walk():
    x = leaf([0.0, 1.0])
    with gg.detect_anomaly():
        y = (gg.relu(x) * gg.log(x + 1.0)).sum()
        y.backward()                               # all finite, kink included: no exception
    np.testing.assert_allclose(x.grad, [0.0, np.log(2.0) + 0.5])
    z = leaf([1e-320, 1.0])
    with gg.detect_anomaly():
        w = (gg.tanh(gg.log(z) * 2.0)).sum()       # forward finite: log(1e-320) ~ -737
        # sum, tanh and mul backpropagate finite values; log's g / z overflows to -inf
        with pytest.raises(FloatingPointError, match=r"^anomaly: backward of log "):
            (gg.log(z) * 2.0).sum().backward()
        w.backward()                               # tanh saturates: g = 0, 0 / 1e-320 = 0
    assert np.isfinite(z.grad).all()


def test_without_anomaly_mode_no_exception():
    x = leaf([-1.0, 0.0, 1.0])
    y = gg.log(x)                                  # nan, -inf, 0 silently
    assert np.isnan(y.data[0]) and np.isneginf(y.data[1])
    y.backward(np.ones(3))
    assert np.isinf(x.grad[1])
    z = leaf([0.0, 4.0])
    (z ** 0.5).sum().backward()
    assert np.isinf(z.grad[0]) and z.grad[1] == 0.25
