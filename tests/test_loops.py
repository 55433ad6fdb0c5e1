"""Loop classification, matmul merging and the hoisting plan of step graphs."""
import numpy as np

import graphgrad as gg
from graphgrad.core import AVal
from compiler import ir
from compiler.autodiff import vjp_graph
from compiler.interp import run
from compiler.passes import simplify
from compiler.passes.loops import CARRIED, INV, TIME, classify, hoist_plan, merge_matmuls
from compiler.trace import trace_step
from compiler.verify import verify

F64 = np.dtype("float64")
av = lambda *s: AVal(tuple(s), F64)


def lstm_graph():
    rec = gg.LSTM(3, 4, dtype=np.float64).layers()[0][0]
    return trace_step(rec.step, rec.params, av(2, 3), (av(2, 4), av(2, 4)))


def test_classify_forward_lstm():
    sg = lstm_graph()
    cls = classify(sg.G)
    mms = [n for n in ir.order(sg.G) if ir.node(sg.G, n).op == "matmul"]
    assert [cls[m] for m in mms] == [TIME, CARRIED]
    assert all(cls[n] == INV for n in sg.G if ir.node(sg.G, n).op == "transpose")
    assert cls[sg.y] == CARRIED


def test_merge_matmuls_packs_gate_weights():
    def step(p, x, h):
        i = gg.sigmoid(x @ p["Wi"] + h @ p["Ui"])
        f = gg.sigmoid(x @ p["Wf"] + h @ p["Uf"])
        g = gg.tanh(x @ p["Wg"] + h @ p["Ug"])
        h = f * h + i * g
        return h, h
    ps = {k: av(3 if k[0] == "W" else 4, 4) for k in ["Wi", "Wf", "Wg", "Ui", "Uf", "Ug"]}
    G = trace_step(step, ps, av(2, 3), av(2, 4)).G
    M = merge_matmuls(G)
    verify(M)
    assert sum(ir.node(M, n).op == "matmul" for n in M) == 2
    rng = np.random.default_rng(0)
    ins = [rng.normal(size=ir.node(G, i).shape) for i in G.graph["inputs"]]
    for a, b in zip(run(G, *ins), run(M, *ins)):
        np.testing.assert_allclose(b, a, rtol=1e-13)
    B = simplify(vjp_graph(M))   # the merged graph still differentiates
    ins_b = ins + [rng.normal(size=(2, 4)) for _ in range(2)]
    np.testing.assert_allclose(run(B, *ins_b)[0], run(vjp_graph(G), *ins_b)[0], rtol=1e-12)


def test_hoist_plan_forward_and_backward():
    sg = lstm_graph()
    G = sg.G
    p = hoist_plan(G, batch=2)
    pre_mm = [n for n in p.pre if ir.node(G, n).op == "matmul"]
    assert len(pre_mm) == 1 and ir.args_of(G, pre_mm[0])[0] == sg.x   # the input projection
    assert all(ir.node(G, n).op == "transpose" for n in p.once)
    assert not set(p.pre) & set(p.loop)
    H = simplify(vjp_graph(G))
    q = hoist_plan(H, batch=2)
    ops = [ir.node(H, n).op for n in q.post]
    assert ops.count("matmul") == 2 and ops.count("sum") == 1    # dW_ih, dW_hh, bias colsum
    assert set(q.post) >= {o for o in H.graph["outputs"][:4]}
    assert len(q.saved) == 1 and ir.node(H, q.saved[0]).shape == (2, 16)   # d(gates) per step
    loop_outs = H.graph["outputs"][4:]
    assert not set(loop_outs) & set(q.post)
