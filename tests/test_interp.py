"""The reference interpreter and the IR verifier."""
import numpy as np
import pytest

import graphgrad as gg
from graphgrad.core import AVal
from compiler import ir
from compiler.errors import IRError
from compiler.interp import run
from compiler.trace import trace_step
from compiler.verify import verify

F64 = np.dtype("float64")


def hand_graph():
    """y = tanh(a @ b + 1.5), built node by node."""
    G = ir.new_graph()
    a = ir.add_node(G, ir.input_node((2, 3), F64))
    b = ir.add_node(G, ir.input_node((3, 4), F64))
    G.graph["inputs"] = [a, b]
    m = ir.add_node(G, ir.Node("matmul", (2, 4), "float64"), [a, b])
    c = ir.add_node(G, ir.const_node(1.5))
    s = ir.add_node(G, ir.Node("add", (2, 4), "float64"), [m, c])
    y = ir.add_node(G, ir.Node("tanh", (2, 4), "float64"), [s])
    G.graph["outputs"] = [y, m]
    return G


def test_run_hand_graph():
    G = hand_graph()
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
    y, m = run(G, a, b)
    np.testing.assert_allclose(y, np.tanh(a @ b + 1.5))
    np.testing.assert_allclose(m, a @ b)
    verify(G)


def test_same_operand_twice():
    G = ir.new_graph()
    a = ir.add_node(G, ir.input_node((3,), F64))
    G.graph["inputs"] = [a]
    sq = ir.add_node(G, ir.Node("mul", (3,), "float64"), [a, a])
    G.graph["outputs"] = [sq]
    assert ir.args_of(G, sq) == [a, a]
    np.testing.assert_allclose(run(G, np.arange(3.0))[0], [0.0, 1.0, 4.0])
    verify(G)


def test_input_errors():
    G = hand_graph()
    with pytest.raises(ValueError, match="shape"):
        run(G, np.zeros((2, 2)), np.zeros((3, 4)))
    with pytest.raises(TypeError, match="dtype"):
        run(G, np.zeros((2, 3), np.float32), np.zeros((3, 4)))
    with pytest.raises(TypeError, match="2 inputs"):
        run(G, np.zeros((2, 3)))


def test_const_roundtrip():
    for v in [np.float32(2.5), np.arange(6.0).reshape(2, 3), np.array([[1, 2]], np.int64)]:
        n = ir.const_node(v)
        hash(n)
        out = ir.const_value(n)
        np.testing.assert_array_equal(out, v)
        assert out.dtype == np.asarray(v).dtype


def test_verify_accepts_traced_lstm_and_rejects_tampering():
    m = gg.LSTM(3, 4, dtype=np.float64)
    rec = m.layers()[0][0]
    a = AVal((2, 4), F64)
    G = trace_step(rec.step, rec.params, AVal((2, 3), F64), (a, a)).G
    verify(G)
    bad = ir.copy_graph(G)
    nid = next(n for n in ir.order(bad) if ir.node(bad, n).op == "matmul")
    n = ir.node(bad, nid)
    bad.nodes[nid]["node"] = ir.Node(n.op, (2, 5), n.dtype, n.attrs)
    with pytest.raises(IRError, match="rule"):
        verify(bad)
    bad = ir.copy_graph(G)
    bad.nodes[nid]["node"] = ir.Node(n.op, n.shape, "float32", n.attrs)
    with pytest.raises(IRError):
        verify(bad)
    bad = ir.copy_graph(G)
    bad.graph["outputs"] = [10_000]
    with pytest.raises(IRError, match="output"):
        verify(bad)
    bad = ir.copy_graph(G)
    u = ir.args_of(bad, nid)[0]
    bad.edges[u, nid]["pos"] = (3,)
    with pytest.raises(IRError, match="positions"):
        verify(bad)


def test_copy_graph_does_not_share_bookkeeping():
    G = hand_graph()
    H = ir.copy_graph(G)
    H.graph["outputs"].append(0)
    H.graph["roles"][0] = "x"
    assert len(G.graph["outputs"]) == 2 and not G.graph["roles"]


def test_order_is_deterministic():
    G = hand_graph()
    assert ir.order(G) == sorted(G.nodes) and ir.dump(G) == ir.dump(ir.copy_graph(G))
