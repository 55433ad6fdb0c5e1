"""Tracing step functions into the IR: structure, constants, source lines and errors."""
import inspect

import numpy as np
import pytest

import graphgrad as gg
from graphgrad.core import PRIMITIVES, AVal, defop
from compiler import ir
from compiler.errors import CompileError
from compiler.trace import flatten, trace_step, unflatten

F32, F64 = np.dtype("float32"), np.dtype("float64")


def av(*shape, dt=F64):
    return AVal(tuple(shape), np.dtype(dt))


def _line_of(marker):
    src, start = inspect.getsourcelines(inspect.getmodule(_line_of))
    return max(start, 1) + next(i for i, s in enumerate(src) if marker in s and "_line_of" not in s)


def simple_step(p, x, h):
    h = gg.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"])  # LINE-SIMPLE
    return h * 2.0, h


P = {"Wx": av(3, 4), "Wh": av(4, 4), "b": av(4)}


def test_structure_roles_and_outputs():
    sg = trace_step(simple_step, P, av(2, 3), av(2, 4))
    G = sg.G
    roles = G.graph["roles"]
    assert [roles[i] for i in G.graph["inputs"]] == ["param"] * 3 + ["x", "state"]
    assert list(sg.params) == ["Wx", "Wh", "b"]
    assert G.graph["outputs"] == [sg.y] + sg.new_state
    assert ir.node(G, sg.y).shape == (2, 4) and ir.node(G, sg.y).dtype == "float64"
    ops = [ir.node(G, n).op for n in ir.order(G)]
    assert ops.count("matmul") == 2 and ops.count("tanh") == 1 and ops.count("const") == 1
    assert "tanh" in ir.dump(G) and "# param Wx" in ir.dump(G)


@pytest.mark.parametrize("dt", [F32, F64])
@pytest.mark.parametrize("make", [
    lambda dt: gg.LSTM(3, 4, dtype=dt), lambda dt: gg.GRU(3, 4, dtype=dt),
    lambda dt: gg.GRU(3, 4, reset_after=False, dtype=dt), lambda dt: gg.RNN(3, 4, dtype=dt),
    lambda dt: gg.RNN(3, 4, nonlinearity="relu", bias=False, dtype=dt)])
def test_traced_cells_run_like_eager(make, dt):
    m = make(dt)
    rec = m.layers()[0][0]
    state = (av(2, 4, dt=dt),) * 2 if m.mode == "lstm" else av(2, 4, dt=dt)
    sg = trace_step(rec.step, rec.params, av(2, 3, dt=dt), state)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3)).astype(dt)
    s = unflatten(sg.state_tree, [rng.normal(size=(2, 4)).astype(dt) for _ in sg.state])
    y, ns = sg.run({k: v.data for k, v in rec.params.items()}, x, s)
    ey, ens = rec.step(rec.params, gg.Tensor(x), unflatten(sg.state_tree, [
        gg.Tensor(a) for a in flatten(s)[0]]))
    np.testing.assert_array_equal(y, ey.data)
    for a, b in zip(flatten(ns)[0], flatten(ens)[0]):
        np.testing.assert_array_equal(a, b.data)
        assert a.dtype == dt


def test_src_names_user_line():
    sg = trace_step(simple_step, P, av(2, 3), av(2, 4))
    tanh = next(ir.node(sg.G, n) for n in sg.G if ir.node(sg.G, n).op == "tanh")
    assert tanh.src.endswith(f"test_trace.py:{_line_of('LINE-SIMPLE')} (simple_step)")
    m = gg.LSTM(3, 4, dtype=np.float64)
    rec = m.layers()[0][0]
    sg = trace_step(rec.step, rec.params, av(2, 3), (av(2, 4), av(2, 4)))
    srcs = {ir.node(sg.G, n).src for n in sg.G if ir.node(sg.G, n).op == "sigmoid"}
    assert all("cells.py" in s and "lstm_step" in s for s in srcs)


def test_scalar_constants_take_the_tracer_dtype():
    sg = trace_step(lambda p, x, h: (x * 0.5 + 1, h - 3), {}, av(2, 2, dt=F32), av(2, 2, dt=F32))
    consts = [ir.node(sg.G, n) for n in sg.G if ir.node(sg.G, n).op == "const"]
    assert sorted(c.attr["value"] for c in consts) == [0.5, 1.0, 3.0]
    assert {c.dtype for c in consts} == {"float32"}


def test_numpy_constants_and_reflected_ops():
    w = np.arange(4.0).reshape(2, 2)
    sg = trace_step(lambda p, x, h: (w @ x + w * h, h), {}, av(2, 2), av(2, 2))
    consts = [ir.node(sg.G, n) for n in sg.G if ir.node(sg.G, n).op == "const"]
    assert all(ir.const_value(c).tolist() == w.tolist() for c in consts) and len(consts) == 2
    x, h = np.ones((2, 2)), np.full((2, 2), 2.0)
    y, _ = sg.run({}, x, h)
    np.testing.assert_allclose(y, w @ x + w * h)


def test_mixed_dtypes_raise_like_eager():
    with pytest.raises(TypeError, match="mix"):
        trace_step(lambda p, x, h: (x + np.ones(2), h), {}, av(2, 2, dt=F32), av(2, 2, dt=F32))


def bad_matmul(p, x, h):
    return x @ p["Wh"], h  # LINE-BAD


def test_shape_error_names_rule_and_line():
    with pytest.raises(ValueError, match="inner dimensions") as e:
        trace_step(bad_matmul, P, av(2, 3), av(2, 4))
    assert f"test_trace.py:{_line_of('LINE-BAD')}" in str(e.value)


def test_new_state_must_match_state():
    with pytest.raises(ValueError, match="new state leaf 0"):
        trace_step(lambda p, x, h: (h, h.sum(-1, keepdims=True)), {}, av(2, 3), av(2, 4))
    with pytest.raises(ValueError, match="structured"):
        trace_step(lambda p, x, s: (x, s[0]), {}, av(2, 4), (av(2, 4), av(2, 4)))
    with pytest.raises(TypeError, match="must return"):
        trace_step(lambda p, x, h: h, {}, av(2, 4), av(2, 4))


def branchy(p, x, h):
    if h.sum():  # LINE-BRANCH
        h = -h
    return h, h


@pytest.mark.parametrize("fn, what", [
    (branchy, "bool"), (lambda p, x, h: (h * float(x.sum()), h), "float"),
    (lambda p, x, h: (np.sqrt(h), h), "np.sqrt"), (lambda p, x, h: (h.numpy(), h), ".numpy"),
    (lambda p, x, h: (h + gg.Tensor(np.ones(4), requires_grad=True), h), "requires_grad")])
def test_compile_errors_for_untraceable_code(fn, what):
    # (np.tanh, np.exp, ... map to the graphgrad ops, as on eager Tensors: ops.UFUNCS)
    with pytest.raises(CompileError, match=what) as e:
        trace_step(fn, {}, av(2, 4), av(2, 4))
    assert "test_trace.py:" in str(e.value)
    if fn is branchy:
        assert f":{_line_of('LINE-BRANCH')} (branchy)" in str(e.value)


def test_unsupported_primitive_names_op_and_line():
    op = defop("_test_opaque", lambda x: x, lambda x: x, None, kind="other")
    try:
        with pytest.raises(CompileError, match="_test_opaque") as e:
            trace_step(lambda p, x, h: (gg.core.bind("_test_opaque", h), h), {}, av(2, 4), av(2, 4))
        assert "test_trace.py:" in str(e.value) and e.value.op == "_test_opaque"
    finally:
        assert PRIMITIVES.pop("_test_opaque") is op


def test_constant_tensor_without_grad_is_a_const():
    c = gg.Tensor(np.full(4, 3.0))
    sg = trace_step(lambda p, x, h: (h * c, h), {}, av(2, 4), av(2, 4))
    assert any(ir.node(sg.G, n).op == "const" and ir.node(sg.G, n).shape == (4,) for n in sg.G)


def test_attrs_freeze_and_thaw():
    attrs = {"index": (slice(1, None, 2), None, Ellipsis, 3), "dtype": np.dtype("float32"),
             "axis": [0, 1]}
    frozen = ir.freeze_attrs(attrs)
    hash(frozen)
    n = ir.Node("astype", (1,), "float32", frozen)
    back = ir.thaw_attrs(n)
    assert back["index"] == attrs["index"] and back["dtype"] == attrs["dtype"]
    assert back["axis"] == (0, 1)


def test_getitem_and_split_trace():
    def step(p, x, h):
        a, b = gg.split(h, 2, axis=-1)
        return gg.concat([b, a[:, ::-1]], axis=-1), h
    sg = trace_step(step, {}, av(2, 4), av(2, 4))
    h = np.arange(8.0).reshape(2, 4)
    y, _ = sg.run({}, np.zeros((2, 4)), h)
    np.testing.assert_array_equal(y, np.concatenate([h[:, 2:], h[:, :2][:, ::-1]], -1))


def test_tree_roundtrip():
    tree = (1, (2, 3), 4)
    leaves, d = flatten(tree)
    assert leaves == [1, 2, 3, 4] and unflatten(d, leaves) == tree
