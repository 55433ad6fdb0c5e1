"""graphgrad.flow: every quantity against a brute-force computation on small float64 models."""
import numpy as np
import pytest

import graphgrad as gg
from graphgrad import flow
from graphgrad.core import Tensor
from graphgrad.flow.jacobians import step_jacobians
from graphgrad.functional import stack

RNG = np.random.default_rng(0)
MODELS = [(gg.RNN, {}), (gg.RNN, {"nonlinearity": "relu"}), (gg.LSTM, {}), (gg.GRU, {}),
          (gg.GRU, {"reset_after": False}), (gg.LSTM, {"num_layers": 2, "bidirectional": True}),
          (gg.GRU, {"num_layers": 2})]


def small(M, kw, T=6, B=2, I=3, H=4, seed=1):
    m = M(I, H, dtype=np.float64, seed=seed, **kw)
    return m, np.random.default_rng(seed).standard_normal((T, B, I))


def rel(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


@pytest.mark.parametrize("M,kw", MODELS)
@pytest.mark.parametrize("loss", ["last", "all"])
def test_lag_parts_sum_to_tape_gradient(M, kw, loss):
    m, xs = small(M, kw)
    fl = flow.from_tape(m, xs, loss=loss)
    res = flow.check(fl)
    assert res["grads"] < 1e-10 and res["state_grads"] < 1e-10
    lt = fl.lags()
    for w in lt.parts:
        if not lt.total[w].any():        # e.g. W_hh of a reverse layer read only at its h0 = 0
            continue
        assert abs(lt.projection_shares(w).sum() - 1) < 1e-10
        assert abs(lt.shares(w).sum() - 1) < 1e-12


def _truncated_grad(m, xs, k_max, loss_t):
    """Brute force: dL_t/dW through at most k_max recurrent steps, by running the tape with the
    state detached everywhere except along the last k_max transitions before t."""
    layer = m.layers()[0][0]
    P = {k: Tensor(v.data.copy(), requires_grad=True) for k, v in layer.params.items()}
    h = m.init_state(xs.shape[1])
    s = tuple(Tensor(a[0]) for a in h) if isinstance(h, tuple) else Tensor(h[0])
    for t in range(loss_t + 1):
        if t <= loss_t - k_max:  # cut: values flow forward, gradients do not
            s = tuple(Tensor(a.data) for a in s) if isinstance(s, tuple) else Tensor(s.data)
        y, s = layer.step(P, Tensor(xs[t]), s)
    (y * flow.readout(y.shape[-1])).sum().backward()
    return {k + "_l0": v.grad for k, v in P.items()}


@pytest.mark.parametrize("M,kw", MODELS[:5])
def test_each_lag_matches_truncated_tape(M, kw):
    m, xs = small(M, kw, T=5)
    lt = flow.from_tape(m, xs).lags()    # loss on the last output: lag = T-1 - use step
    prev = {w: 0 for w in lt.parts}
    for k in range(5):
        tr = _truncated_grad(m, xs, k, 4)
        for w in lt.parts:
            assert rel(tr[w] - prev[w], lt.parts[w][k]) < 1e-9 or \
                np.abs(tr[w] - prev[w] - lt.parts[w][k]).max() < 1e-14
        prev = tr


def _fd_jacobian(step, params, x, state, eps=1e-6):
    from graphgrad.flow.stepgraph import flatten, unflatten
    s = flatten(state)
    P = {k: Tensor(v) for k, v in params.items()}

    def f(flat):
        return flatten(gg.nn._map_state(step(P, Tensor(x), gg.nn._map_state(
            unflatten(flat, state), Tensor))[1], lambda t: t.data))
    cols = []
    for j in range(s.shape[1]):
        e = np.zeros_like(s)
        e[:, j] = eps
        cols.append((f(s + e) - f(s - e)) / (2 * eps))
    return np.stack(cols, -1)          # (B, S_out, S_in)


@pytest.mark.parametrize("M,kw", MODELS[:5])
def test_step_jacobians_match_finite_differences(M, kw):
    m, xs = small(M, kw, T=4)
    L = flow.from_tape(m, xs).layers[0]
    J = step_jacobians(L)
    for n in range(1, L.T + 1):
        fd = _fd_jacobian(L.step, L.params, xs[n - 1], L.states[n - 1])
        assert np.abs(J[n - 1] - fd).max() < 1e-7


def test_rnn_jacobian_is_diag_fprime_times_whh():
    m, xs = small(gg.RNN, {})
    L = flow.from_tape(m, xs).layers[0]
    J = step_jacobians(L)
    W = L.params["weight_hh"]
    for n in range(1, L.T + 1):
        h = L.states[n]
        want = (1 - h ** 2)[:, :, None] * W[None]
        assert np.abs(J[n - 1] - want).max() < 1e-15


def test_chain_norms_and_singular_values():
    m, xs = small(gg.LSTM, {}, T=8)
    fl = flow.from_tape(m, xs)
    ch = fl.chains(n_sv=3)["l0"]
    C = np.broadcast_to(np.eye(8), (2, 8, 8))
    for d in range(9):
        if d:
            C = C @ ch.jacobians[8 - d]
        sv = np.linalg.svd(C, compute_uv=False)
        assert np.allclose(ch.log10_sv[d], np.log10(sv[:, :3]), atol=1e-12)
        assert np.allclose(ch.norm()[d], np.linalg.norm(C, 2, axis=(1, 2)), rtol=1e-12)


def test_chain_survives_underflow():
    m, xs = small(gg.RNN, {}, T=400, B=1)
    for p in m.parameters().values():
        p.data = p.data * 0.3
    ch = flow.from_tape(m, xs).chains()["l0"]
    assert np.isfinite(ch.log10_norm).all() and ch.log10_norm[-1, 0] < -330
    assert flow.diagnose(flow.from_tape(m, xs[:50])).verdict == "vanishing"


def test_per_step_norms_match_retain_grad_on_tape():
    m, xs = small(gg.LSTM, {}, T=5, B=1)
    layer = m.layers()[0][0]
    P = {k: Tensor(v.data.copy(), requires_grad=True) for k, v in layer.params.items()}
    s = (Tensor(np.zeros((1, 4))), Tensor(np.zeros((1, 4))))
    hs, cs, ys = [], [], []
    for t in range(5):
        y, s = layer.step(P, Tensor(xs[t]), s)
        s[0].retain_grad(), s[1].retain_grad()
        hs.append(s[0]), cs.append(s[1]), ys.append(y)
    out = stack(ys)
    (out[4] * flow.readout(4)).sum().backward()
    n = flow.from_tape(m, xs).norms()["l0"]
    assert np.allclose(n["h"][:, 0], [np.linalg.norm(h.grad) for h in hs], rtol=1e-12)
    assert np.allclose(n["c"][:, 0], [np.linalg.norm(c.grad) for c in cs], rtol=1e-12)


def _cut_lstm(p, x, state):
    h, c = state
    return gg.cells.lstm_step(p, x, (gg.stop_gradient(h), c))


def _cut_gru(reset_after):
    def step(p, x, h):
        hs = gg.stop_gradient(h)
        inner = gg.cells.gru_step if reset_after else gg.cells.gru_reset_before_step
        # same values as the GRU; only the carry term z * h keeps h's gradient
        new, _ = inner(p, x, hs)
        xz = x @ p["weight_ih"].T + p["bias_ih"]
        hz = hs @ p["weight_hh"].T + p["bias_hh"]
        H = h.shape[-1]
        z = gg.sigmoid(xz[:, H:2 * H] + hz[:, H:2 * H])
        out = new - z * hs + z * h
        return out, out
    return step


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_before"])
def test_route_split_against_cut_tape(cell):
    M = gg.LSTM if cell == "lstm" else gg.GRU
    m, xs = small(M, {"reset_after": cell != "gru_before"} if M is gg.GRU else {}, T=6, B=2)
    fl = flow.from_tape(m, xs, loss="all")
    r = fl.routes()["l0"]
    total = sum(r.parts.values())
    assert rel(total, r.total) < 1e-12
    params = m.layers()[0][0].params
    step = _cut_lstm if cell == "lstm" else _cut_gru(cell == "gru")
    cut = flow.from_tape(gg.Recurrent(step, params), xs, m.init_state(2)[0] if M is gg.GRU else
                         tuple(a[0] for a in m.init_state(2)), loss="all")
    ref = cut.reference["state_grads"]["l0"]
    first = "cell" if cell == "lstm" else "carry"
    want = ref[:, :, 4:] if cell == "lstm" else ref
    assert rel(r.parts[first], want) < 1e-10


def test_custom_step_function_and_from_adjoints():
    def step(p, x, state):                  # a two-part state, neither part is the output
        a, b = state
        a2 = gg.tanh(x @ p["U"] + b @ p["W"])
        b2 = 0.9 * b + 0.1 * a2
        return a2 @ p["V"], (a2, b2)
    rng = np.random.default_rng(3)
    params = {"U": rng.standard_normal((3, 4)), "W": rng.standard_normal((4, 4)),
              "V": rng.standard_normal((4, 2))}
    model = gg.Recurrent(step, params)
    xs, s0 = rng.standard_normal((7, 2, 3)), (np.zeros((2, 4)), rng.standard_normal((2, 4)))
    fl = flow.from_tape(model, xs, s0, loss=lambda out, fin: (out * out).sum() + fin[1].sum())
    assert flow.check(fl)["grads"] < 1e-10 and flow.check(fl)["state_grads"] < 1e-10
    out, _ = model(xs, s0)
    fa = flow.from_adjoints(model, xs, s0, 2 * out.data, (np.zeros((2, 4)), np.ones((2, 4))))
    for k, v in fl.grads().items():
        assert rel(fa.grads()[k], v) < 1e-12
    J = step_jacobians(fa.layers[0])
    fd = _fd_jacobian(step, {k: np.asarray(v) for k, v in params.items()}, xs[0], s0)
    assert np.abs(J[0] - fd).max() < 1e-7


def test_from_compiled_uses_program_totals():
    m, xs = small(gg.GRU, {})
    fl0 = flow.from_tape(m, xs, loss="all")
    d_out = np.zeros((6, 2, 4)) + flow.readout(4)

    class FakeProgram:                      # the DESIGN.md contract, answered by the tape
        def forward(self, xs, state0):
            out, h = m(xs, state0)
            return out.data, h.data

        def vjp(self, xs, state0, d_out, d_state):
            m.zero_grad()
            out, h = m(xs, state0)
            ((out * d_out).sum() + (h * d_state).sum()).backward()
            return {k: p.grad for k, p in m.parameters().items()}, np.zeros(xs.shape), None
    fl = flow.from_compiled(FakeProgram(), m, xs, np.zeros((1, 2, 4)), d_out, np.zeros((1, 2, 4)))
    # a duck-typed program without step_adjoints: totals are checked, per-step views rebuilt
    assert fl.source == "compiled" and "state_grads" not in fl.reference
    assert flow.check(fl)["grads"] < 1e-10
    for k, v in fl0.grads().items():
        assert rel(fl.grads()[k], v) < 1e-12


def test_batch_first_model_takes_its_own_layout():
    """A batch_first model's xs are (B, T, I): flow must analyse T steps of B sequences (not
    B steps of T), and the loss / d_out see the output as the model returns it."""
    m = gg.GRU(3, 4, dtype=np.float64, seed=1, batch_first=True)
    tm = gg.GRU(3, 4, dtype=np.float64, seed=1)          # same weights, time-major
    xs = np.random.default_rng(1).standard_normal((2, 6, 3))    # (B, T, I)
    fl = flow.from_tape(m, xs)
    assert (fl.layers[0].T, fl.layers[0].xs.shape[1]) == (6, 2)
    want = flow.from_tape(tm, xs.transpose(1, 0, 2))
    for k, v in want.grads().items():
        assert rel(fl.grads()[k], v) < 1e-14
    m.zero_grad()
    out, _ = m(xs)                                       # (B, T, H)
    (out * out).sum().backward()
    fa = flow.from_tape(m, xs, loss=lambda o, fin: (o * o).sum())
    fb = flow.from_adjoints(m, xs, None, 2 * out.data)
    for k, p in m.parameters().items():
        assert rel(fa.grads()[k], p.grad) < 1e-12 and rel(fb.grads()[k], p.grad) < 1e-12
    with pytest.raises(ValueError, match=r"d_out has shape \(6, 2, 4\), the output is \(2, 6, 4\)"):
        flow.from_adjoints(m, xs, None, np.ones((6, 2, 4)))


def test_unknown_layer_name_is_a_key_error_naming_the_layers():
    fl = flow.from_tape(*small(gg.RNN, {}, T=3))
    assert fl.layer("l0") is fl.layers[0]
    with pytest.raises(KeyError, match="no layer 'l1'; the flow has l0"):
        fl.layer("l1")
