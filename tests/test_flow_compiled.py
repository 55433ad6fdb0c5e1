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


def test_from_compiled_needs_the_programs_model():
    m = gg.LSTM(3, 4, dtype=np.float64)
    prog = compiler.compile(m, seq_len=5, batch=1)
    xs, d_out = np.random.default_rng(0).standard_normal((5, 1, 3)), np.ones((5, 1, 4))
    other = gg.LSTM(3, 4, dtype=np.float64, seed=5)
    with pytest.raises(ValueError, match="not the model `prog` was compiled from"):
        flow.from_compiled(prog, other, xs, None, d_out)
    twin = gg.LSTM(3, 4, dtype=np.float64)          # same seed: same weights, so accepted
    assert flow.check(flow.from_compiled(prog, twin, xs, None, d_out))["grads"] < 1e-10


@pytest.mark.parametrize("call,exc,words", [
    (lambda m, xs: flow.from_tape(m, xs, loss="mean"), ValueError, "loss must be 'last', 'all'"),
    (lambda m, xs: flow.from_tape(m, xs, loss=3), TypeError, "loss must be"),
    (lambda m, xs: flow.from_tape(m, np.full(xs.shape, np.nan)), ValueError, "NaN or inf"),
    (lambda m, xs: flow.from_tape(m, xs[:0]), ValueError, "T >= 1"),
    (lambda m, xs: flow.from_tape(m, xs, state0=np.zeros((1, 1, 4))), TypeError,
     r"a tuple \(h0, c0\)"),
    (lambda m, xs: flow.from_tape(m, xs, state0=(np.zeros((1, 2, 4)),) * 2), ValueError,
     r"initial state has shape \[1, 2, 4\]"),
    (lambda m, xs: flow.from_adjoints(m, xs, None, np.ones((10, 1, 4)), np.ones((1, 1, 4))),
     ValueError, "d_final has shapes"),
])
def test_flow_argument_errors(call, exc, words):
    m = gg.LSTM(3, 4, dtype=np.float64)
    with pytest.raises(exc, match=words):
        call(m, np.random.default_rng(1).standard_normal((10, 1, 3)))


def test_from_compiled_batch_first_model():
    """prog.forward / vjp take and return (B, T, ...) for a batch_first model; flow follows."""
    m = gg.LSTM(3, 4, dtype=np.float64, batch_first=True)
    rng = np.random.default_rng(2)
    xs, d_out = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 4))
    fl = flow.from_compiled(compiler.compile(m, 5, 2), m, xs, None, d_out)
    assert fl.layers[0].T == 5
    errs = flow.check(fl)
    assert max(errs.values()) < 1e-12, errs
