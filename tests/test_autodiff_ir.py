"""Backward graphs traced from graphgrad's VJP rules agree with the eager tape."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphgrad as gg
from graphgrad.core import AVal
from compiler import ir
from compiler.autodiff import vjp_graph
from compiler.interp import run
from compiler.trace import flatten, trace_step, unflatten
from compiler.verify import verify

F64 = np.dtype("float64")


def av(*shape):
    return AVal(tuple(shape), F64)


def tape_vjp(step, params, x, state, cts):
    """(cotangents of params..., x, state leaves...) from the eager tape (state: a pytree)."""
    P = {k: gg.Tensor(v, requires_grad=True) for k, v in params.items()}
    X = gg.Tensor(x, requires_grad=True)
    leaves, tree = flatten(state)
    S = [gg.Tensor(s, requires_grad=True) for s in leaves]
    y, ns = step(P, X, unflatten(tree, S))
    outs = [y] + flatten(ns)[0]
    loss = sum((o * gg.Tensor(c)).sum() for o, c in zip(outs, cts))
    loss.backward()
    z = lambda t: t.grad if t.grad is not None else np.zeros(t.shape)
    return [z(t) for t in list(P.values()) + [X] + S]


def check(step, pshapes, xshape, sshapes, seed=0):
    rng = np.random.default_rng(seed)
    state = tuple(av(*s) for s in sshapes) if isinstance(sshapes, list) else av(*sshapes)
    sg = trace_step(step, {k: av(*s) for k, s in pshapes.items()}, av(*xshape), state)
    H = vjp_graph(sg.G)
    verify(H)
    params = {k: rng.normal(size=s) for k, s in pshapes.items()}
    x = rng.normal(size=xshape)
    leaves = [rng.normal(size=ir.node(sg.G, i).shape) for i in sg.state]
    cts = [rng.normal(size=ir.node(sg.G, o).shape) for o in sg.G.graph["outputs"]]
    got = run(H, *params.values(), x, *leaves, *cts)
    want = tape_vjp(step, params, x, unflatten(sg.state_tree, leaves), cts)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    return sg, H


@pytest.mark.parametrize("make", [
    lambda: gg.LSTM(3, 4, dtype=np.float64), lambda: gg.GRU(3, 4, dtype=np.float64),
    lambda: gg.GRU(3, 4, reset_after=False, dtype=np.float64),
    lambda: gg.RNN(3, 4, nonlinearity="relu", dtype=np.float64),
    lambda: gg.GRU(3, 4, bias=False, reset_after=False, dtype=np.float64)])
def test_builtin_cells_match_tape(make):
    m = make()
    rec = m.layers()[0][0]
    ps = {k: v.shape for k, v in rec.params.items()}
    check(rec.step, ps, (2, 3), [(2, 4), (2, 4)] if m.mode == "lstm" else (2, 4))


def test_graph_layout():
    sg, H = check(lambda p, x, h: (gg.tanh(x @ p["W"] + h), h * 2.0), {"W": (3, 4)}, (2, 3), (2, 4))
    G = sg.G
    for nid in G:   # forward ids name the same nodes in the backward graph
        assert ir.node(H, nid) == ir.node(G, nid)
    cts = [i for i in H.graph["inputs"] if H.graph["roles"][i] == "ct"]
    assert H.graph["inputs"] == G.graph["inputs"] + cts and len(cts) == 2
    assert H.graph["out_names"] == ["d:W", "d:x", "d:state[0]"]
    tanh = next(n for n in G if ir.node(G, n).op == "tanh")
    bwd_srcs = {ir.node(H, n).src for n in H if n not in G and ir.node(H, n).op != "input"}
    assert ir.node(G, tanh).src in bwd_srcs   # backward nodes keep their forward line


def test_unused_input_gets_zeros_and_wrt_subset():
    step = lambda p, x, h: (x * 3.0, h)
    sg, H = check(step, {"W": (2, 2)}, (2, 2), (2, 2))
    out = run(H, np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)),
              np.full((2, 2), 5.0))
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[2], 5.0)    # a passed-through state: ct flows unchanged
    H2 = vjp_graph(sg.G, wrt=[sg.x])
    assert len(H2.graph["outputs"]) == 1
    with pytest.raises(ValueError):
        vjp_graph(sg.G, wrt=[sg.y])


def test_stop_gradient_and_broadcasting():
    def step(p, x, h):
        return gg.sigmoid(x + p["b"]) * gg.stop_gradient(h) + h.sum(-1, keepdims=True), h
    check(step, {"b": (1, 3)}, (4, 3), (4, 3))
    check(lambda p, x, h: (gg.max(x * h, axis=0, keepdims=False) + p["b"], h), {"b": (3,)},
          (4, 3), (4, 3))


def test_two_state_tensors_and_reused_output():
    def step(p, x, s):
        h, c = s
        c = gg.sigmoid(x @ p["W"]) * c + gg.tanh(h)
        h = gg.tanh(c) * h
        return h, (h, c)
    check(step, {"W": (3, 4)}, (2, 3), [(2, 4), (2, 4)])


UNARY = [gg.tanh, gg.sigmoid, gg.neg, lambda a: gg.exp(gg.tanh(a)),
         lambda a: gg.log(1.0 + gg.sigmoid(a)), lambda a: a * a, lambda a: a / 3.0]
BINARY = [gg.add, gg.sub, gg.mul, lambda a, b: a / (1.5 + gg.sigmoid(b)),
          lambda a, b: a @ gg.transpose(b) @ b * 0.1,
          lambda a, b: a * gg.sum(b, -1, keepdims=True), lambda a, b: gg.concat(
              [a[:, :1] * b[:, 1:2], b[:, 1:]], axis=-1)]


@st.composite
def programs(draw):
    n = draw(st.integers(1, 6))
    return [(draw(st.booleans()), draw(st.integers(0, 6)), draw(st.integers(0, 20)),
             draw(st.integers(0, 20))) for _ in range(n)]


def from_program(prog):
    def step(p, x, h):
        pool = [x @ p["W"], h, p["b"] + h]
        for unary, k, i, j in prog:
            a, b = pool[i % len(pool)], pool[j % len(pool)]
            pool.append(UNARY[k](a) if unary else BINARY[k](a, b))
        return pool[-1], gg.tanh(pool[-1] + pool[-2])
    return step


@settings(max_examples=40, deadline=None)
@given(programs(), st.integers(1, 3), st.integers(2, 4))
def test_random_steps_match_tape(prog, B, H):
    check(from_program(prog), {"W": (3, H), "b": (H,)}, (B, 3), (B, H))
