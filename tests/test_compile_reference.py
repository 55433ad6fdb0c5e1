"""The reference recurrent program (IR + interpreter) agrees with the eager tape."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphgrad as gg
from compiler.errors import CompileError
from compiler.program import reference_program
from compiler.trace import flatten, unflatten
from compile_checks import tape

TOL = {np.float64: 1e-12, np.float32: 1e-5}


def close(got, want, rtol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, np.abs(want).max()))


def compare(model, prog, xs, s0, rtol, seed=0):
    rng = np.random.default_rng(seed)
    out, sT = prog.forward(xs, s0)
    dt = xs.dtype
    d_out = rng.normal(size=out.shape).astype(dt)
    d_sT = unflatten(flatten(sT)[1], [rng.normal(size=s.shape).astype(dt) for s in flatten(sT)[0]])
    grads, d_xs, d_s0 = prog.vjp(xs, s0, d_out, d_sT)
    r_out, r_sT, r_grads, r_dxs, r_ds0 = tape(model, xs, s0, d_out, d_sT)
    close(out, r_out, rtol)
    for a, b in zip(flatten(sT)[0], r_sT):
        close(a, b, rtol)
    assert set(grads) == set(model.parameters())
    for k in grads:
        close(grads[k], r_grads[k], rtol)
    close(d_xs, r_dxs, rtol)
    for a, b in zip(flatten(d_s0)[0], r_ds0):
        close(a, b, rtol)


MODELS = {
    "rnn_tanh": lambda dt, **kw: gg.RNN(3, 4, dtype=dt, **kw),
    "rnn_relu": lambda dt, **kw: gg.RNN(3, 4, nonlinearity="relu", dtype=dt, **kw),
    "lstm": lambda dt, **kw: gg.LSTM(3, 4, dtype=dt, **kw),
    "gru": lambda dt, **kw: gg.GRU(3, 4, dtype=dt, **kw),
    "gru_reset_before": lambda dt, **kw: gg.GRU(3, 4, reset_after=False, dtype=dt, **kw),
}
SHAPES = {"1layer": {}, "2layers": dict(num_layers=2), "bidir": dict(bidirectional=True),
          "2layers_bidir": dict(num_layers=2, bidirectional=True)}


def random_state(model, B, rng):
    s = model.init_state(B)
    return unflatten(flatten(s)[1], [rng.normal(size=a.shape).astype(model.dtype) * 0.5
                                     for a in flatten(s)[0]])


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_builtin_models_match_tape(kind, shape, dt):
    model = MODELS[kind](dt, **SHAPES[shape])
    T, B = 4, 3
    rng = np.random.default_rng(7)
    prog = reference_program(model, T, B)
    xs = rng.normal(size=(T, B, 3)).astype(dt)
    compare(model, prog, xs, random_state(model, B, rng), TOL[dt])


def test_no_bias_and_batch_first():
    model = gg.LSTM(3, 4, bias=False, batch_first=True, dtype=np.float64)
    rng = np.random.default_rng(0)
    prog = reference_program(model, 5, 2)
    xs = rng.normal(size=(2, 5, 3))
    out, _ = prog.forward(xs, random_state(model, 2, rng))
    assert out.shape == (2, 5, 4)
    compare(model, prog, xs, random_state(model, 2, rng), 1e-12)


def test_default_state_and_zero_state_cotangent():
    model = gg.GRU(3, 4, dtype=np.float64)
    prog = reference_program(model, 3, 2)
    xs = np.random.default_rng(0).normal(size=(3, 2, 3))
    out, hT = prog.forward(xs)
    ref, rhT = model(xs)
    close(out, ref.data, 1e-12)
    g, dxs, dh0 = prog.vjp(xs, None, np.ones_like(out))
    assert dh0.shape == (1, 2, 4) and dxs.shape == xs.shape


# ---------------------------------------------------------------- custom step functions
UNARY = [gg.tanh, gg.sigmoid, gg.relu, gg.neg, lambda a: gg.exp(gg.tanh(a)),
         lambda a: gg.log(1.0 + gg.sigmoid(a)), lambda a: a * 0.5]
BINARY = [gg.add, gg.sub, gg.mul, lambda a, b: a / (1.5 + gg.sigmoid(b)),
          lambda a, b: a * gg.tanh(gg.sum(b, -1, keepdims=True)),
          lambda a, b: gg.concat([b[:, 1:], a[:, :1]], axis=-1),
          lambda a, b: gg.tanh(a) @ b.T @ b * 0.1]


@st.composite
def recipes(draw):
    return [(draw(st.booleans()), draw(st.integers(0, 6)), draw(st.integers(0, 30)),
             draw(st.integers(0, 30))) for _ in range(draw(st.integers(1, 7)))]


def make_step(recipe, two):
    def step(p, x, state):
        h, c = state if two else (state, None)
        pool = [x @ p["Wx"], h @ p["Wh"] + p["b"], h] + ([c] if two else [])
        for unary, k, i, j in recipe:
            a, b = pool[i % len(pool)], pool[j % len(pool)]
            pool.append(UNARY[k](a) if unary else BINARY[k](a, b))
        h2 = gg.tanh(pool[-1] + pool[1])
        if not two:
            return pool[-1], h2
        c2 = gg.sigmoid(pool[-2]) * c + gg.tanh(pool[-1])
        return pool[-1] * h2, (h2, c2)
    return step


@settings(max_examples=25, deadline=None)
@given(recipes(), st.booleans(), st.booleans(), st.integers(1, 3), st.integers(2, 4),
       st.sampled_from([np.float64, np.float32]))
def test_custom_steps_match_tape(recipe, two, reverse, B, H, dt):
    rng = np.random.default_rng(len(recipe))
    params = {"Wx": rng.normal(size=(3, H)) * 0.5, "Wh": rng.normal(size=(H, H)) * 0.5,
              "b": rng.normal(size=(H,)) * 0.1}
    model = gg.Recurrent(make_step(recipe, two), {k: v.astype(dt) for k, v in params.items()},
                         reverse=reverse)
    T = 4
    s0 = tuple(rng.normal(size=(B, H)).astype(dt) for _ in range(2 if two else 1))
    s0 = s0 if two else s0[0]
    prog = reference_program(model, T, B, input_size=3, state=s0)
    compare(model, prog, rng.normal(size=(T, B, 3)).astype(dt), s0, TOL[dt])


# ---------------------------------------------------------------- errors
def test_argument_errors_before_running():
    model = gg.LSTM(3, 4, num_layers=2, dtype=np.float32)
    prog = reference_program(model, 5, 2)
    xs = np.zeros((5, 2, 3), np.float32)
    s0 = model.init_state(2)
    with pytest.raises(ValueError, match="xs"):
        prog.forward(np.zeros((5, 2, 4), np.float32), s0)
    with pytest.raises(TypeError, match="xs"):
        prog.forward(xs.astype(np.float64), s0)
    with pytest.raises(TypeError, match="structure"):
        prog.forward(xs, s0[0])
    with pytest.raises(ValueError, match=r"state0\[1\]"):
        prog.forward(xs, (s0[0], np.zeros((1, 2, 4), np.float32)))
    with pytest.raises(ValueError, match="d_out"):
        prog.vjp(xs, s0, np.zeros((5, 2, 5), np.float32))
    with pytest.raises(TypeError):
        reference_program(model, 5, 2, dtype=np.float64)
    with pytest.raises(ValueError, match="input_size"):
        reference_program(gg.Recurrent(lambda p, x, h: (h, h), {}), 5, 2)


def test_unsupported_code_in_step_names_the_line():
    def step(p, x, h):
        h = gg.tanh(x @ p["W"] + h)
        if h.max() > 0:
            h = -h
        return h, h
    model = gg.Recurrent(step, {"W": np.ones((3, 4))})
    with pytest.raises((CompileError, TypeError)) as e:
        reference_program(model, 3, 2, input_size=3, state=np.zeros((2, 4)))
    assert "test_compile_reference.py" in str(e.value) or "'>'" in str(e.value)
