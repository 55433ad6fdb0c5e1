"""Gradient flow from a compiled program: the native reverse loop's per-step state adjoints and
gradients agree with what graphgrad.flow rebuilds from the step VJPs."""
import numpy as np
import pytest

import compiler
import graphgrad as gg
from graphgrad import flow


@pytest.mark.parametrize("make, width", [
    (lambda: gg.LSTM(3, 5, dtype=np.float64), 5),
    (lambda: gg.GRU(3, 5, dtype=np.float64, num_layers=2, bidirectional=True), 10),
    (lambda: gg.RNN(3, 5, dtype=np.float64), 5),
])
def test_compiled_step_adjoints_match_flow(make, width):
    m = make()
    rng = np.random.default_rng(0)
    xs, d_out = rng.standard_normal((7, 2, 3)), rng.standard_normal((7, 2, width))
    s0 = m.init_state(2)
    prog = compiler.compile(m, 7, 2)
    fl = flow.from_compiled(prog, m, xs, s0, d_out, None)
    errs = flow.check(fl)
    assert set(errs) == {"grads", "state_grads", "d_xs"}
    assert max(errs.values()) < 1e-12, errs
    adj = prog.step_adjoints(xs, s0, d_out)
    assert set(adj) == {L.name for L in fl.layers}
    for name, a in adj.items():
        assert a.shape == fl.layer(name).adj_total.shape


def test_step_adjoints_equal_retained_tape_gradients():
    """dL/dh_t from the compiled loop vs the tape's retain_grad on every h_t."""
    m = gg.RNN(2, 4, dtype=np.float64)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((6, 3, 2))
    d_out = rng.standard_normal((6, 3, 4))
    hs = []

    def step(p, x, h):
        y, h = gg.cells.rnn_tanh_step(p, x, h)
        hs.append(h.retain_grad())
        return y, h
    rec = gg.Recurrent(step, m.layers()[0][0].params)
    out, _ = rec(xs, np.zeros((3, 4)))
    (out * d_out).sum().backward()
    adj = compiler.compile(m, 6, 3, backend="numpy").step_adjoints(xs, m.init_state(3), d_out)
    np.testing.assert_allclose(adj["l0"], np.stack([h.grad for h in hs]), rtol=1e-12, atol=1e-14)
