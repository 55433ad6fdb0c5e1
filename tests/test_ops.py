"""Every primitive in graphgrad.PRIMITIVES: VJP vs central finite differences, forward vs numpy.

The tests are parametrized by the primitive table itself: a primitive added to the table without
an entry in DIFF_CASES / NONDIFF_CASES below fails `test_primitive_vjp_matches_finite_differences`
(KeyError) and `test_case_tables_cover_the_primitive_table`.

Each DIFF_CASES entry is a hypothesis strategy drawing a `Case`: a function of graphgrad tensors
that binds the primitive, float64 inputs inside the op's smooth domain (log/pow positive, relu
away from its kink, max without near-ties, divisors away from 0) and a numpy reference.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import graphgrad as gg
from graphgrad.core import bind

from conftest import rel_err

F64 = np.float64


@dataclass
class Case:
    fn: Callable        # graphgrad tensors -> tensor (binds the primitive under test)
    args: list          # float64 arrays, all differentiated
    ref: Callable       # numpy arrays -> ndarray


# ---------------------------------------------------------------- input strategies
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)


def uniform(shape, lo, hi):
    # No subnormals: a gradient of ~1e-313 carries a few significant bits, so no finite
    # difference can match it to rtol 1e-6 (hypothesis found matmul with b = 2.2e-313).
    return hnp.arrays(F64, shape, elements=st.floats(lo, hi, allow_subnormal=False))


@st.composite
def signed(draw, shape, lo, hi):
    """Magnitudes in [lo, hi] with random signs: away from 0 (kinks, poles, tiny gradients)."""
    mag = draw(uniform(shape, lo, hi))
    sign = draw(hnp.arrays(np.bool_, shape))
    return np.where(sign, mag, -mag)


@st.composite
def untied(draw, shape):
    """Distinct values at least 0.25 apart, so max has no ties within finite-difference reach."""
    n = int(np.prod(shape))
    perm = np.array(draw(st.permutations(range(n))), dtype=F64)
    offset = draw(st.floats(-1, 1))
    return (perm * 0.25 + offset - n * 0.125).reshape(shape)


def unary(name, fn, ref, elements):
    return st.builds(lambda x: Case(fn, [x], ref), shapes.flatmap(elements))


def binary(fn, ref, xs, ys):
    @st.composite
    def draw_case(draw):
        sx, sy = draw(pairs).input_shapes
        return Case(fn, [draw(xs(sx)), draw(ys(sy))], ref)
    return draw_case()


def any_vals(s):
    return uniform(s, -2, 2)


def nonzero(lo=0.1, hi=2.0):
    return lambda s: signed(s, lo, hi)


@st.composite
def axes_of(draw, ndim):
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none" or ndim == 0:
        return None if kind == "none" else ()
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    return tuple(draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim)))


@st.composite
def reduce_case(draw, name):
    shape = draw(shapes)
    x = draw(untied(shape)) if name == "max" else draw(any_vals(shape))
    axis, keep = draw(axes_of(len(shape))), draw(st.booleans())
    f, ref = (gg.max, np.max) if name == "max" else (gg.sum, np.sum)
    return Case(lambda t: f(t, axis, keep), [x], lambda a: ref(a, axis=axis, keepdims=keep))


@st.composite
def matmul_case(draw):
    ba, bb = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2,
                                                    max_side=2)).input_shapes
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    a, b = draw(any_vals(ba + (n, k))), draw(any_vals(bb + (k, m)))
    return Case(gg.matmul, [a, b], np.matmul)


@st.composite
def reshape_case(draw):
    shape = draw(shapes)
    target = list(draw(st.permutations(shape)))
    target.insert(draw(st.integers(0, len(target))), 1)        # never equal to shape
    x = draw(any_vals(shape))
    return Case(lambda t: gg.reshape(t, target), [x], lambda a: np.reshape(a, target))


@st.composite
def transpose_case(draw):
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=4, max_side=3))
    axes = tuple(draw(st.permutations(range(len(shape)))))
    if axes == tuple(range(len(shape))):
        axes = axes[::-1]
    return Case(lambda t: gg.transpose(t, axes), [draw(any_vals(shape))],
                lambda a: np.transpose(a, axes))


@st.composite
def broadcast_case(draw):
    target = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3))
    drop = draw(st.integers(0, len(target)))
    shape = tuple(1 if draw(st.booleans()) else n for n in target[drop:])
    if shape == tuple(target):
        target = (2,) + tuple(target)
    return Case(lambda t: gg.broadcast_to(t, target), [draw(any_vals(shape))],
                lambda a: np.broadcast_to(a, target))


def _as_tuple(index):
    return index if isinstance(index, tuple) else (index,)


@st.composite
def getitem_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    index = _as_tuple(draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True)))
    return Case(lambda t: gg.getitem(t, index), [draw(any_vals(shape))], lambda a: a[index])


@st.composite
def pad_into_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    index = _as_tuple(draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True)))
    g = draw(any_vals(np.empty(shape)[index].shape))

    def ref(a):
        out = np.zeros(shape)
        out[index] = a
        return out
    return Case(lambda t: gg.ops.pad_into(t, index, shape), [g], ref)


@st.composite
def concat_case(draw):
    base = list(draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3)))
    axis = draw(st.integers(-len(base), len(base) - 1))
    xs = []
    for _ in range(draw(st.integers(2, 3))):
        base[axis] = draw(st.integers(1, 3))
        xs.append(draw(any_vals(tuple(base))))
    return Case(lambda *ts: gg.concat(ts, axis), xs, lambda *a: np.concatenate(a, axis))


@st.composite
def ids_and_rows(draw):
    rows = draw(st.integers(1, 4))
    ids_shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4))
    ids = draw(hnp.arrays(np.int64, ids_shape, elements=st.integers(0, rows - 1)))
    return ids, rows, draw(st.integers(1, 3))


@st.composite
def take_case(draw):
    ids, rows, d = draw(ids_and_rows())
    return Case(lambda w: gg.take(w, ids), [draw(any_vals((rows, d)))], lambda w: w[ids])


def _scatter_add(g, ids, rows):
    out = np.zeros((rows, g.shape[-1]))
    for idx in np.ndindex(ids.shape):
        out[ids[idx]] += g[idx]
    return out


@st.composite
def take_grad_case(draw):
    ids, rows, d = draw(ids_and_rows())
    return Case(lambda g: gg.ops.take_grad(g, ids, rows), [draw(any_vals(ids.shape + (d,)))],
                lambda g: _scatter_add(g, ids, rows))


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@st.composite
def where_case(draw):
    # three mutually broadcastable shapes; the mask is a constant of the case (it carries no
    # gradient, and finite differences through a 0/1 mask would flip branches)
    sc, sx, sy = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3,
                                                        max_side=3)).input_shapes
    c = draw(hnp.arrays(np.bool_, sc)).astype(F64)
    x, y = draw(any_vals(sx)), draw(any_vals(sy))
    return Case(lambda a, b: gg.where(gg.Tensor(c), a, b), [x, y],
                lambda a, b: np.where(c != 0, a, b))


DIFF_CASES = {
    "where": where_case(),
    "add": binary(gg.add, np.add, any_vals, any_vals),
    "sub": binary(gg.sub, np.subtract, any_vals, any_vals),
    "mul": binary(gg.mul, np.multiply, nonzero(), nonzero()),
    "div": binary(gg.div, np.divide, nonzero(), nonzero(0.5, 2.0)),
    # base away from 1 (d/dy = x^y log x vanishes there), exponent away from 0 (d/dx vanishes)
    "pow": binary(gg.power, np.power, lambda s: uniform(s, 0.3, 0.8).map(lambda a: a ** np.sign(
        a - 0.55)), nonzero(0.25, 2.0)),
    "neg": unary("neg", gg.neg, np.negative, any_vals),
    "exp": unary("exp", gg.exp, np.exp, any_vals),
    "log": unary("log", gg.log, np.log, lambda s: uniform(s, 0.2, 3.0)),
    "tanh": unary("tanh", gg.tanh, np.tanh, lambda s: uniform(s, -3, 3)),
    "sigmoid": unary("sigmoid", gg.sigmoid, _np_sigmoid, lambda s: uniform(s, -4, 4)),
    "relu": unary("relu", gg.relu, lambda x: np.maximum(x, 0), nonzero(0.05, 2.0)),
    # float64 -> float64 through the primitive itself (the public astype skips a no-op cast);
    # float32 <-> float64 gradients are checked exactly in test_astype_gradient_dtypes.
    "astype": unary("astype", lambda t: bind("astype", t, dtype=np.dtype(F64)), lambda x: x,
                    any_vals),
    "matmul": matmul_case(),
    "sum": reduce_case("sum"),
    "max": reduce_case("max"),
    "reshape": reshape_case(),
    "transpose": transpose_case(),
    "broadcast_to": broadcast_case(),
    "getitem": getitem_case(),
    "pad_into": pad_into_case(),
    "concat": concat_case(),
    "take": take_case(),
    "take_grad": take_grad_case(),
}

DIFFERENTIABLE = sorted(n for n, op in gg.PRIMITIVES.items() if op.vjps is not None)
NON_DIFFERENTIABLE = sorted(n for n, op in gg.PRIMITIVES.items() if op.vjps is None)


def _tensors(arrays, requires_grad=False):
    return [gg.Tensor(a.copy(), requires_grad=requires_grad) for a in arrays]


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@settings(max_examples=40)
@given(data=st.data())
def test_primitive_vjp_matches_finite_differences(name, data):
    case = data.draw(DIFF_CASES[name], label=name)
    with gg.record() as rec:
        out = case.fn(*_tensors(case.args))
    assert name in [e.op for e in rec], f"the {name} case never binds {name}: {rec}"
    want = case.ref(*case.args)
    assert out.shape == np.shape(want) and out.dtype == F64
    np.testing.assert_allclose(out.data, want, rtol=1e-13, atol=0)
    report = gg.gradcheck(case.fn, case.args, rtol=1e-6, atol=0.0)
    assert report.ok and report.max_rel_err < 1e-6, str(report)


def test_case_tables_cover_the_primitive_table():
    assert set(DIFF_CASES) == set(DIFFERENTIABLE)
    assert set(NONDIFF_CASES) == set(NON_DIFFERENTIABLE)
    assert set(DIFFERENTIABLE) | set(NON_DIFFERENTIABLE) == set(gg.PRIMITIVES)


def test_where_selects_without_leaking_the_other_branch():
    """A select, not cond*x + (1-cond)*y: the inf of the branch not taken stays out of the
    value and out of the gradient of the other operand; NaN in cond counts as true."""
    x = gg.Tensor(np.array([1.0, np.inf, 3.0, 4.0]), requires_grad=True)
    y = gg.Tensor(np.array([np.inf, 2.0, np.nan, 5.0]), requires_grad=True)
    c = gg.Tensor(np.array([1.0, 0.0, 1.0, np.nan]))
    out = gg.where(c, x, y)
    np.testing.assert_array_equal(out.data, [1.0, 2.0, 3.0, 4.0])
    (out * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, 2.0, 2.0])
    np.testing.assert_array_equal(y.grad, [0.0, 2.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"where: shapes \[2\], \[3\] and \[3\] do not "):
        gg.where(gg.Tensor(np.ones(2)), x[:3], y[:3])
    with pytest.raises(TypeError, match="where: operands mix float32 and float64"):
        gg.where(gg.Tensor(np.ones(4, np.float32)), x, y)


def test_gradcheck_argument_errors():
    with pytest.raises(ValueError, match=r"eps must be a step in \(0, 1\)"):
        gg.gradcheck(gg.tanh, [np.ones(3)], eps=0)
    with pytest.raises(ValueError, match="gradcheck_model: eps"):
        gg.gradcheck_model(gg.RNN(2, 2, dtype=np.float64), np.ones((2, 1, 2)), eps=-1e-6)
    with pytest.raises(TypeError, match="must return a float64 graphgrad Tensor"):
        gg.gradcheck(lambda a: np.tanh(a.data).sum(), [np.ones(3)])


def test_gradcheck_catches_a_wrong_vjp(monkeypatch):
    # The harness above must be able to fail: a tanh VJP off by the factor (1 + a) is caught.
    monkeypatch.setattr(gg.PRIMITIVES["tanh"], "vjps", (lambda g, a, x: g * (1.0 - a),))
    with pytest.raises(gg.GradcheckError, match="FAILED"):
        gg.gradcheck(gg.tanh, [np.linspace(-1, 1, 5)], rtol=1e-6, atol=0.0)
    # and a broadcasting VJP that forgets nothing but the sum-to-shape is not enough either
    monkeypatch.setattr(gg.PRIMITIVES["mul"], "vjps", (lambda g, a, x, y: g * y,
                                                       lambda g, a, x, y: g * y))
    with pytest.raises(gg.GradcheckError):
        gg.gradcheck(gg.mul, [np.array([1.0, 2.0]), np.array([3.0, -1.0])], rtol=1e-6, atol=0.0)


def test_gradcheck_model_checks_tuple_state_arguments(monkeypatch):
    """The arrays inside a tuple argument (an LSTM-style (h0, c0)) are checked like an array
    argument; they were skipped, so a wrong gradient reaching only c0 passed. With T = 1 the
    exp below sees c0 alone, so scaling its VJP by 1.001 must fail exactly arg1[1]."""
    def step(p, x, state):
        h, c = state
        c = gg.exp(c) * 0.5 + gg.tanh(x @ p["Wx"] + h @ p["Wh"])
        h = gg.tanh(c)
        return h, (h, c)
    rng = np.random.default_rng(0)
    m = gg.Recurrent(step, {"Wx": rng.standard_normal((3, 4)) * .5,
                            "Wh": rng.standard_normal((4, 4)) * .5})
    xs, s0 = rng.standard_normal((1, 2, 3)), (rng.standard_normal((2, 4)) * .5,
                                              rng.standard_normal((2, 4)) * .5)
    rep = gg.gradcheck_model(m, xs, s0)
    assert [r.name for r in rep.inputs] == ["Wx", "Wh", "arg0", "arg1[0]", "arg1[1]"]
    monkeypatch.setattr(gg.PRIMITIVES["exp"], "vjps", (lambda g, a, x: g * a * 1.001,))
    rep = gg.gradcheck_model(m, xs, s0, raise_on_failure=False)
    assert not rep.ok
    assert [r.name for r in rep.inputs if r.max_rel_err > rep.rtol] == ["arg1[1]"]


def test_gradcheck_model_checks_every_output_not_only_the_first(monkeypatch):
    """Only the model's first output (the output sequence) was projected. Here it never sees c,
    which reaches only the final state, so a wrong gradient through c passed: d(c0) was 0 on
    both sides. Every returned Tensor now takes part."""
    def step(p, x, state):
        h, c = state
        c = gg.exp(c) * 0.5 + x @ p["Wc"]
        h = gg.tanh(x @ p["Wx"] + h @ p["Wh"])
        return h, (h, c)
    rng = np.random.default_rng(1)
    m = gg.Recurrent(step, {k: rng.standard_normal(s) * .5 for k, s in
                            (("Wc", (3, 4)), ("Wx", (3, 4)), ("Wh", (4, 4)))})
    # T = 1: only c0 passes through the exp
    xs, s0 = rng.standard_normal((1, 2, 3)), (rng.standard_normal((2, 4)) * .5,
                                              rng.standard_normal((2, 4)) * .5)
    assert gg.gradcheck_model(m, xs, s0).ok
    monkeypatch.setattr(gg.PRIMITIVES["exp"], "vjps", (lambda g, a, x: g * a * 1.001,))
    rep = gg.gradcheck_model(m, xs, s0, raise_on_failure=False)
    assert [r.name for r in rep.inputs if r.max_rel_err > rep.rtol] == ["arg1[1]"]
    # gradcheck of a function: the same for a tuple of outputs
    def fn(a, b):
        return gg.tanh(a), (gg.exp(b),)
    rep = gg.gradcheck(fn, [np.linspace(-1, 1, 4), np.linspace(0, 1, 3)],
                       raise_on_failure=False)
    assert [r.name for r in rep.inputs if r.max_rel_err > rep.rtol] == ["arg1"]


def test_gradcheck_leaves_out_outputs_the_tape_does_not_differentiate():
    """Found in review of the every-output change: a detached final state (truncated BPTT)
    failed the check (finite differences move it, the tape by design does not), and an int
    label output raised in the projection. Scalars in a tuple each get a random weight, so two
    wrong gradients that cancel in a plain sum are still caught."""
    class TBPTT(gg.Module):
        def __init__(self):
            self.rnn = gg.RNN(3, 4, dtype=np.float64, seed=0)

        def parameters(self):
            return self.rnn.parameters()

        def __call__(self, xs):
            out, h = self.rnn(xs)
            return out, h.detach(), gg.Tensor(np.argmax(out.data, axis=-1))
    xs = np.random.default_rng(1).standard_normal((5, 2, 3))
    assert gg.gradcheck_model(TBPTT(), xs).ok
    assert gg.gradcheck(lambda a: (gg.tanh(a), gg.Tensor(np.arange(3)), gg.Tensor(a.data)),
                        [np.linspace(-1, 1, 3)]).ok
    with pytest.raises(TypeError, match="must return a float64 graphgrad Tensor"):
        gg.gradcheck(lambda a: gg.Tensor(a.data), [np.ones(3)])

    def cancelling(a):
        return gg.exp(a).sum(), -gg.exp(a).sum()
    args = [np.linspace(-1, 1, 3)]
    assert gg.gradcheck(cancelling, args).ok
    orig = gg.PRIMITIVES["exp"].vjps
    try:
        gg.PRIMITIVES["exp"].vjps = (lambda g, a, x: g * a * 1.5,)
        assert not gg.gradcheck(cancelling, args, raise_on_failure=False).ok
    finally:
        gg.PRIMITIVES["exp"].vjps = orig


def test_gradcheck_model_leaves_weights_and_gradients_as_they_were():
    """Its own gradients (of a random projection) stayed in every .grad, replacing the caller's,
    and the next backward() accumulated onto them."""
    m = gg.GRU(3, 4, dtype=np.float64)
    xs = np.random.default_rng(0).standard_normal((3, 2, 3))
    out, _ = m(xs)
    (out * out).sum().backward()
    before = {k: (p.data.copy(), p.grad.copy()) for k, p in m.parameters().items()}
    gg.gradcheck_model(m, xs)
    for k, p in m.parameters().items():
        np.testing.assert_array_equal(p.data, before[k][0])
        np.testing.assert_array_equal(p.grad, before[k][1])
    m.zero_grad()
    gg.gradcheck_model(m, xs)
    assert all(p.grad is None for p in m.parameters().values())
    out, _ = m(xs)
    (out * out).sum().backward()
    for k, p in m.parameters().items():
        np.testing.assert_allclose(p.grad, before[k][1], rtol=1e-12)


def test_astype_gradient_dtypes():
    x32 = gg.Tensor(np.array([0.5, -1.25, 3.0], np.float32), requires_grad=True)
    y = gg.astype(x32, F64)
    assert y.dtype == F64 and [e.op for e in y.tape()] == ["astype"]
    g = np.array([0.1, 0.2, -0.3])
    y.backward(g)
    assert x32.grad.dtype == np.float32
    np.testing.assert_array_equal(x32.grad, g.astype(np.float32))
    x64 = gg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    z = gg.astype(x64, np.float32) * np.float32(3)
    z.backward(np.ones(2, np.float32))
    assert x64.grad.dtype == F64
    np.testing.assert_array_equal(x64.grad, [3.0, 3.0])


# ---------------------------------------------------------------- non-differentiable primitives
def _check_positive(x):
    t = gg.Tensor(x, requires_grad=True)
    m = gg.positive(t)
    np.testing.assert_array_equal(m.data, (x > 0).astype(F64))
    (m * t).sum().backward()                       # only the direct path carries gradient
    np.testing.assert_array_equal(t.grad, (x > 0).astype(F64))
    gg.gradcheck(lambda a: gg.positive(a) * a, [x], rtol=1e-6, atol=0.0)


def _check_equal(x):
    y = np.where(np.arange(x.size).reshape(x.shape) % 2 == 0, x, x + 1.0)
    tx, ty = gg.Tensor(x, requires_grad=True), gg.Tensor(y, requires_grad=True)
    m = gg.equal(tx, ty)
    np.testing.assert_array_equal(m.data, (x == y).astype(F64))
    (m * tx + m * ty).sum().backward()
    np.testing.assert_array_equal(tx.grad, (x == y).astype(F64))
    np.testing.assert_array_equal(ty.grad, (x == y).astype(F64))


def _check_comparisons(x):
    y = np.where(np.arange(x.size).reshape(x.shape) % 3 == 0, x, -x)   # ties, and both orders
    tx, ty = gg.Tensor(x, requires_grad=True), gg.Tensor(y, requires_grad=True)
    for got, want in ((tx > ty, x > y), (tx >= ty, x >= y), (tx < ty, x < y), (tx <= ty, x <= y),
                      (tx > 0.5, x > 0.5), (gg.less(0.5, tx), 0.5 < x)):
        assert got.dtype == F64
        np.testing.assert_array_equal(got.data, want.astype(F64))
    m = tx > ty                                    # a mask carries no gradient
    (m * tx + m * ty).sum().backward()
    np.testing.assert_array_equal(tx.grad, (x > y).astype(F64))
    np.testing.assert_array_equal(ty.grad, (x > y).astype(F64))
    nan = gg.Tensor(np.full(x.shape, np.nan))
    for m in (nan > tx, nan >= tx, nan < tx, nan <= tx):
        assert not m.data.any()                    # NaN compares false, as in numpy
    assert not (tx == ty) is True and {tx: 1}[tx] == 1    # == stays identity: Tensors hash


def _check_stop_gradient(x):
    t = gg.Tensor(x, requires_grad=True)
    s = gg.stop_gradient(t)
    np.testing.assert_array_equal(s.data, x)
    (s * t).sum().backward()                       # d/dx (sg(x) x) = sg(x) = x, not 2x
    np.testing.assert_array_equal(t.grad, x)
    t2 = gg.Tensor(x, requires_grad=True)
    gg.stop_gradient(t2).sum().backward()
    assert t2.grad is None                         # no path at all: no gradient


def _check_one_hot(x):
    ids = (np.abs(x * 10).astype(np.int64) % 4)
    oh = gg.one_hot(ids, 4)
    np.testing.assert_array_equal(oh.data, np.eye(4)[ids])
    assert oh.dtype == F64 and not oh.requires_grad
    assert gg.one_hot(ids, 4, np.float32).dtype == np.float32
    w = gg.Tensor(np.ones(ids.shape + (4,)), requires_grad=True)
    (oh * w).sum().backward()
    np.testing.assert_array_equal(w.grad, np.eye(4)[ids])
    with pytest.raises(IndexError, match="one_hot"):
        gg.one_hot(np.array([4]), 4)
    with pytest.raises(TypeError, match="one_hot"):
        gg.one_hot(np.array([1.0]), 4)


NONDIFF_CASES = {"positive": _check_positive, "equal": _check_equal,
                 "greater": _check_comparisons, "greater_equal": _check_comparisons,
                 "stop_gradient": _check_stop_gradient, "one_hot": _check_one_hot}


@pytest.mark.parametrize("name", NON_DIFFERENTIABLE)
@settings(max_examples=20)
@given(data=st.data())
def test_nondifferentiable_primitive(name, data):
    x = data.draw(shapes.flatmap(nonzero(0.05, 2.0)))
    NONDIFF_CASES[name](x)


def test_stop_gradient_blocks_what_finite_differences_see():
    # sanity of the check above: FD disagrees with the (intentionally) zero rule
    report = gg.gradcheck(gg.stop_gradient, [np.array([1.0, 2.0])], raise_on_failure=False)
    assert not report.ok


# ---------------------------------------------------------------- composite functions
def np_log_softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


logits = hnp.array_shapes(min_dims=1, max_dims=3, max_side=4).flatmap(lambda s: uniform(s, -5, 5))


@settings(max_examples=30)
@given(x=logits, data=st.data())
def test_softmax_and_log_softmax(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    ls = gg.log_softmax(gg.Tensor(x), axis)
    np.testing.assert_allclose(ls.data, np_log_softmax(x, axis), rtol=1e-13, atol=1e-13)
    sm = gg.softmax(gg.Tensor(x), axis)
    np.testing.assert_allclose(sm.data, np.exp(np_log_softmax(x, axis)), rtol=1e-13)
    np.testing.assert_allclose(sm.data.sum(axis), 1.0, rtol=1e-13)
    gg.gradcheck(lambda t: gg.log_softmax(t, axis), [x], rtol=1e-6, atol=0.0)
    gg.gradcheck(lambda t: gg.softmax(t, axis), [x], rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_log_softmax_is_stable_at_huge_logits(scale):
    x = np.array([[1.0, 1.0 - 1e-4, 0.0], [0.5, 1.0, 0.25]]) * scale
    t = gg.Tensor(x, requires_grad=True)
    ls = gg.log_softmax(t)
    assert np.isfinite(ls.data).all()
    np.testing.assert_allclose(ls.data, np_log_softmax(x), rtol=1e-12, atol=1e-12)
    sm = gg.softmax(t)
    np.testing.assert_allclose(sm.data.sum(-1), 1.0, rtol=1e-14)
    g = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]])
    ls.backward(g)
    p = np.exp(np_log_softmax(x))
    np.testing.assert_allclose(t.grad, g - p * g.sum(-1, keepdims=True), rtol=1e-12, atol=1e-12)


@st.composite
def ce_inputs(draw):
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 5))
    lead = draw(st.sampled_from([(n,), (n, 2), ()]))
    x = draw(uniform(lead + (c,), -4, 4))
    t = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, c - 1)))
    return x, t


@settings(max_examples=30)
@given(inp=ce_inputs(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_vs_numpy_formula(inp, reduction):
    x, t = inp
    c = x.shape[-1]
    flat, ft = x.reshape(-1, c), t.reshape(-1)
    lse = np.log(np.sum(np.exp(flat), axis=1))
    nll = (lse - flat[np.arange(flat.shape[0]), ft]).reshape(t.shape)
    want = {"mean": np.mean(nll), "sum": np.sum(nll), "none": nll}[reduction]
    xt = gg.Tensor(x, requires_grad=True)
    loss = gg.cross_entropy(xt, t, reduction)
    np.testing.assert_allclose(loss.data, want, rtol=1e-12, atol=1e-14)
    g = np.ones_like(loss.data) if reduction != "none" else np.linspace(-1, 1, nll.size).reshape(
        nll.shape)
    loss.backward(g)
    onehot = np.eye(c)[t]
    sm = np.exp(np_log_softmax(x))
    scale = {"mean": 1.0 / max(nll.size, 1), "sum": 1.0, "none": None}[reduction]
    want_grad = (sm - onehot) * (g[..., None] if scale is None else scale)
    np.testing.assert_allclose(xt.grad, want_grad, rtol=1e-12, atol=1e-14)
    gg.gradcheck(lambda a: gg.cross_entropy(a, t, reduction), [x], rtol=1e-6, atol=0.0)


def test_cross_entropy_errors():
    with pytest.raises(ValueError, match="cross_entropy"):
        gg.cross_entropy(gg.Tensor(np.zeros((3, 4))), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="reduction"):
        gg.cross_entropy(gg.Tensor(np.zeros((3, 4))), np.zeros(3, np.int64), "avg")


def test_cross_entropy_targets_that_are_not_arrays():
    # regression: only ndarray targets were shape-checked, so a list broadcast silently, and a
    # bare Python int became a float (a misleading "indices must be integers" error)
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 5.0], [0.5, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"cross_entropy: targets \[1\].*\[4, 3\]"):
        gg.cross_entropy(gg.Tensor(logits), [2])
    with pytest.raises(ValueError, match=r"cross_entropy: targets \[\].*\[4, 3\]"):
        gg.cross_entropy(gg.Tensor(logits), 2)
    np.testing.assert_allclose(gg.cross_entropy(gg.Tensor(logits), [2, 1, 2, 0]).data,
                               gg.cross_entropy(gg.Tensor(logits), np.array([2, 1, 2, 0])).data,
                               rtol=0)
    row = logits[2]
    np.testing.assert_allclose(gg.cross_entropy(gg.Tensor(row), 1).data,
                               -np_log_softmax(row)[1], rtol=1e-14)
    np.testing.assert_array_equal(gg.one_hot(2, 4).data, [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(gg.take(gg.Tensor(logits), 1).data, logits[1])


def test_mse_reduction_none_and_unknown():
    # regression: any reduction other than "mean" returned the sum, "none" included
    p, t = np.array([1.0, 2.0, 3.0]), np.zeros(3)
    pt = gg.Tensor(p, requires_grad=True)
    out = gg.mse(pt, t, "none")
    np.testing.assert_array_equal(out.data, [1.0, 4.0, 9.0])
    out.backward(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_array_equal(pt.grad, [2.0, 0.0, -6.0])
    with pytest.raises(ValueError, match="mse: reduction"):
        gg.mse(gg.Tensor(p), t, "avg")


@pytest.mark.parametrize("x, y, dx, dy", [
    (0.0, 0.0, 0.0, 0.0),              # x**0: derivative 0 in x, even at x = 0
    (0.0, 1.5, 0.0, 0.0),              # x = 0, y > 0: 0 * log(0) is taken as 0
    (0.0, 2.0, 0.0, 0.0),
    (0.0, 1.0, 1.0, 0.0),
    (2.0, 0.0, 0.0, np.log(2.0)),
    (-2.0, 2.0, -4.0, np.nan),        # log of a negative base stays NaN, as in torch
])
def test_pow_gradients_at_zero_match_torch(x, y, dx, dy):
    # regression: both VJPs made 0 * inf = NaN at x = 0, so one zero base (say after relu)
    # turned a learnable exponent's whole gradient into NaN; torch gives 0 there
    xt = gg.Tensor(np.array(x), requires_grad=True)
    yt = gg.Tensor(np.array(y), requires_grad=True)
    (xt ** yt).backward()
    np.testing.assert_allclose(xt.grad, dx, rtol=1e-15)
    np.testing.assert_allclose(yt.grad, dy, rtol=1e-15)


def test_learnable_exponent_of_relu_outputs_has_a_finite_gradient():
    k = gg.Tensor(np.array([1.5]), requires_grad=True)
    (gg.relu(gg.Tensor(np.array([-1.0, 0.0, 2.0]))) ** k).sum().backward()
    np.testing.assert_allclose(k.grad, [2.0 ** 1.5 * np.log(2.0)], rtol=1e-14)


@settings(max_examples=25)
@given(shape=shapes, data=st.data())
def test_mse_and_mean(shape, data):
    p = data.draw(any_vals(shape))
    q = p + data.draw(signed(shape, 0.1, 2.0))     # gradient 2(p - q)/n away from 0
    pt = gg.Tensor(p, requires_grad=True)
    loss = gg.mse(pt, q)
    np.testing.assert_allclose(loss.data, np.mean((p - q) ** 2), rtol=1e-13, atol=1e-15)
    loss.backward()
    np.testing.assert_allclose(pt.grad, 2 * (p - q) / p.size, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gg.mse(gg.Tensor(p), q, "sum").data, np.sum((p - q) ** 2),
                               rtol=1e-13, atol=1e-15)
    gg.gradcheck(lambda a, b: gg.mse(a, b), [p, q], rtol=1e-6, atol=0.0)
    axis, keep = data.draw(axes_of(len(shape))), data.draw(st.booleans())
    m = gg.mean(gg.Tensor(p), axis, keep)
    np.testing.assert_allclose(m.data, np.mean(p, axis=axis, keepdims=keep), rtol=1e-13,
                               atol=1e-15)
    gg.gradcheck(lambda a: gg.mean(a, axis, keep), [p], rtol=1e-6, atol=0.0)


def test_mse_shape_mismatch():
    with pytest.raises(ValueError, match=r"mse.*\[2, 3\].*\[3, 2\]"):
        gg.mse(gg.Tensor(np.zeros((2, 3))), np.zeros((3, 2)))


@settings(max_examples=25)
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), data=st.data())
def test_split_and_stack(shape, data):
    x = data.draw(any_vals(shape))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    sizes = np.diff([0] + cuts + [n]).tolist()
    pieces = gg.split(gg.Tensor(x), sizes, axis)
    want = np.split(x, np.cumsum(sizes)[:-1], axis)
    assert len(pieces) == len(want)
    for p, w in zip(pieces, want):
        np.testing.assert_array_equal(p.data, w)
    weights = [np.full(w.shape, k + 1.0) for k, w in enumerate(want)]
    xt = gg.Tensor(x, requires_grad=True)
    total = None
    for p, w in zip(gg.split(xt, sizes, axis), weights):
        term = (p * w).sum()
        total = term if total is None else total + term
    total.backward()
    np.testing.assert_array_equal(xt.grad, np.concatenate(weights, axis))
    # stack
    k = data.draw(st.integers(1, 3))
    xs = [data.draw(any_vals(shape)) for _ in range(k)]
    sax = data.draw(st.integers(-len(shape) - 1, len(shape)))
    np.testing.assert_array_equal(gg.stack([gg.Tensor(a) for a in xs], sax).data,
                                  np.stack(xs, sax))
    gg.gradcheck(lambda *ts: gg.stack(ts, sax), xs, rtol=1e-6, atol=0.0)


def test_split_errors():
    x = gg.Tensor(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="equal sections"):
        gg.split(x, 2, axis=1)
    with pytest.raises(ValueError, match="add up"):
        gg.split(x, [2, 2], axis=1)
    with pytest.raises(ValueError, match="stack"):
        gg.stack([])
    # regressions: 0 sections was a ZeroDivisionError, numpy integers were "not iterable"
    with pytest.raises(ValueError, match="split: the number of sections"):
        gg.split(x, 0, axis=1)
    assert [p.shape for p in gg.split(x, np.int64(2), axis=0)] == [(1, 5), (1, 5)]


def test_embedding_repeated_ids_accumulate():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3))
    ids = np.array([[0, 2, 0], [2, 2, 4]])
    wt = gg.Tensor(w, requires_grad=True)
    e = gg.embedding(wt, ids)
    np.testing.assert_array_equal(e.data, w[ids])
    g = rng.standard_normal(ids.shape + (3,))
    e.backward(g)
    want = np.zeros_like(w)
    want[0] = g[0, 0] + g[0, 2]
    want[2] = g[0, 1] + g[1, 0] + g[1, 1]
    want[4] = g[1, 2]
    np.testing.assert_allclose(wt.grad, want, rtol=1e-15)
    assert not wt.grad[[1, 3]].any()
    gg.gradcheck(lambda a: gg.embedding(a, gg.Tensor(ids)), [w], rtol=1e-6, atol=0.0)
    with pytest.raises(IndexError, match="take"):
        gg.embedding(wt, np.array([5]))
