"""Sequence models and cells: finite differences, and PyTorch parity in float64.

Every model kind (RNN tanh/relu, LSTM, GRU with reset_after True/False) in every layout variant
(1 or 2 layers, uni/bidirectional, batch_first, bias=False) is checked
  * against central finite differences (graphgrad.gradcheck) for the outputs, final states, inputs,
    initial states and all weights, relative error < 1e-6;
  * against torch.nn.RNN/LSTM/GRU (and, for the Cho et al. 2014 GRU that torch lacks, a direct
    torch-autograd transcription of its equations) for outputs, final states and every gradient,
    relative error < 1e-9, with weights copied in both directions through state_dict.
The worst error per model lands in the `error_log` table printed at the end of the session;
tests/report_errors.py prints the same table on its own.
"""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphgrad as gg

from conftest import rel_err

torch = pytest.importorskip("torch")

KINDS = ["RNN tanh", "RNN relu", "LSTM", "GRU", "GRU reset_after=False"]
# (num_layers, bidirectional, batch_first, bias)
VARIANTS = list(itertools.product([1, 2], [False, True], [False, True], [True, False]))
# the finite-difference check runs on a covering subset (every flag both on and off); the
# hypothesis-drawn test below samples from all of VARIANTS
FD_VARIANTS = [(1, False, False, True), (2, True, True, True), (1, True, False, False),
               (2, False, True, False)]

FD_TOL, TORCH_TOL = 1e-6, 1e-9
# Absolute floor of the finite-difference comparison: central differences with eps = 1e-6 leave
# ~1e-11 of noise here, while a wrong derivative is off by the size of the gradient itself.
FD_ATOL = 1e-9


def variant_id(v):
    L, bi, bf, bias = v
    return f"L{L}" + ("-bi" if bi else "") + ("-bf" if bf else "") + ("" if bias else "-nobias")


# ---------------------------------------------------------------- constructors
def make_ours(kind, I, H, variant, dtype=np.float64, seed=0):
    L, bi, bf, bias = variant
    kw = dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias, dtype=dtype, seed=seed)
    if kind.startswith("RNN"):
        return gg.RNN(I, H, nonlinearity=kind.split()[1], **kw)
    if kind == "LSTM":
        return gg.LSTM(I, H, **kw)
    return gg.GRU(I, H, reset_after=kind == "GRU", **kw)


class ChoGRU(torch.nn.Module):
    """The reset-before GRU of Cho et al. (2014), written directly in torch ops:
    r = s(W_ir x + b_ir + W_hr h + b_hr), z = s(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn), h' = (1 - z) n + z h.
    Parameters use torch.nn.GRU's names, shapes and gate order (r, z, n)."""

    def __init__(self, I, H, num_layers=1, bidirectional=False, batch_first=False, bias=True,
                 dtype=torch.float64):
        super().__init__()
        self.L, self.D, self.bf, self.bias, self.H = num_layers, 1 + bidirectional, batch_first, \
            bias, H
        for layer in range(num_layers):
            for d in range(self.D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                shapes = {"weight_ih": (3 * H, I if layer == 0 else H * self.D),
                          "weight_hh": (3 * H, H)}
                if bias:
                    shapes.update(bias_ih=(3 * H,), bias_hh=(3 * H,))
                for k, s in shapes.items():
                    self.register_parameter(k + sfx, torch.nn.Parameter(
                        torch.empty(s, dtype=dtype).uniform_(-H ** -0.5, H ** -0.5)))

    def forward(self, x, h0):
        x = x.transpose(0, 1) if self.bf else x
        finals, layer_in = [], x
        for layer in range(self.L):
            outs = []
            for d in range(self.D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                W_ir, W_iz, W_in = getattr(self, "weight_ih" + sfx).chunk(3, 0)
                W_hr, W_hz, W_hn = getattr(self, "weight_hh" + sfx).chunk(3, 0)
                zeros = torch.zeros(3 * self.H, dtype=x.dtype)
                b_ir, b_iz, b_in = (getattr(self, "bias_ih" + sfx) if self.bias else zeros).chunk(3)
                b_hr, b_hz, b_hn = (getattr(self, "bias_hh" + sfx) if self.bias else zeros).chunk(3)
                h, T = h0[layer * self.D + d], layer_in.shape[0]
                ys = [None] * T
                for t in (reversed(range(T)) if d else range(T)):
                    xt = layer_in[t]
                    r = torch.sigmoid(xt @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
                    z = torch.sigmoid(xt @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
                    n = torch.tanh(xt @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
                    h = (1 - z) * n + z * h
                    ys[t] = h
                outs.append(torch.stack(ys))
                finals.append(h)
            layer_in = torch.cat(outs, -1)
        return (layer_in.transpose(0, 1) if self.bf else layer_in), torch.stack(finals)


def make_torch(kind, I, H, variant):
    L, bi, bf, bias = variant
    kw = dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias, dtype=torch.float64)
    if kind.startswith("RNN"):
        return torch.nn.RNN(I, H, nonlinearity=kind.split()[1], **kw)
    if kind == "LSTM":
        return torch.nn.LSTM(I, H, **kw)
    if kind == "GRU":
        return torch.nn.GRU(I, H, **kw)
    return ChoGRU(I, H, **kw)


def make_inputs(kind, T, B, I, H, variant, seed):
    L, bi, bf, _ = variant
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((B, T, I) if bf else (T, B, I))
    states = [0.5 * rng.standard_normal((L * (1 + bi), B, H))
              for _ in range(2 if kind == "LSTM" else 1)]
    return xs, states


def _flat_outputs(kind, out, state):
    parts = [out] + (list(state) if kind == "LSTM" else [state])
    return gg.concat([p.reshape(-1) for p in parts])


# ---------------------------------------------------------------- the two measurements
def fd_error(kind, variant, T, B, I, H, seed=0, max_elements=24):
    """Worst relative error of the tape's gradients vs central finite differences: gradients of a
    random projection of (out, h_n[, c_n]) wrt xs, h0[, c0] and every weight (entry by entry up
    to max_elements entries, along 8 random directions for larger tensors)."""
    model = make_ours(kind, I, H, variant, seed=seed)
    xs, states = make_inputs(kind, T, B, I, H, variant, seed)
    names = ["h0", "c0"][:len(states)]
    inputs = {"xs": xs, **dict(zip(names, states)), **model.state_dict()}

    def fn(xs, h0, c0=None, **weights):
        model._params.update(weights)    # run the model on gradcheck's own weight tensors
        state = (h0, c0) if kind == "LSTM" else h0
        return _flat_outputs(kind, *model(xs, state))

    report = gg.gradcheck(fn, inputs, rtol=FD_TOL, atol=FD_ATOL, max_elements=max_elements)
    assert {r.name for r in report.inputs} == set(inputs)
    # An input whose whole gradient is ~1e-6 (a drawn size can make one) has a relative error of
    # FD noise over a tiny scale; below FD_ATOL its entries are judged by the absolute error only.
    return max((r.max_rel_err for r in report.inputs if r.max_abs_err > FD_ATOL), default=0.0)


def torch_error(kind, variant, T, B, I, H, seed=0, direction="torch->ours"):
    """Worst relative difference to PyTorch over outputs, final states and all gradients."""
    torch.manual_seed(seed)
    tm = make_torch(kind, I, H, variant)
    ours = make_ours(kind, I, H, variant, seed=seed + 1)
    if direction == "torch->ours":
        ours.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    else:
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    assert set(ours.state_dict()) == set(tm.state_dict())
    xs, states = make_inputs(kind, T, B, I, H, variant, seed)

    g_xs = gg.Tensor(xs, requires_grad=True)
    g_st = [gg.Tensor(s, requires_grad=True) for s in states]
    out, st_T = ours(g_xs, tuple(g_st) if kind == "LSTM" else g_st[0])
    finals = list(st_T) if kind == "LSTM" else [st_T]

    t_xs = torch.tensor(xs, requires_grad=True)
    t_st = [torch.tensor(s, requires_grad=True) for s in states]
    t_out, t_stT = tm(t_xs, tuple(t_st) if kind == "LSTM" else t_st[0])
    t_finals = list(t_stT) if kind == "LSTM" else [t_stT]

    rng = np.random.default_rng(seed + 7)
    projs = [rng.standard_normal(o.shape) for o in [out] + finals]
    loss = sum((o * p).sum() for o, p in zip([out] + finals, projs))
    loss.backward()
    t_loss = sum((o * torch.from_numpy(p)).sum() for o, p in zip([t_out] + t_finals, projs))
    t_loss.backward()

    pairs = [(f"output {i}", a.data, b.detach().numpy())
             for i, (a, b) in enumerate(zip([out] + finals, [t_out] + t_finals))]
    pairs += [("d xs", g_xs.grad, t_xs.grad.numpy())]
    pairs += [(f"d state{i}", a.grad, b.grad.numpy()) for i, (a, b) in enumerate(zip(g_st, t_st))]
    t_params = dict(tm.named_parameters())
    pairs += [(f"d {k}", p.grad, t_params[k].grad.numpy()) for k, p in ours.parameters().items()]
    errs = {name: rel_err(a, b) for name, a, b in pairs}
    worst = max(errs.values())
    assert worst < TORCH_TOL, {k: v for k, v in errs.items() if v >= TORCH_TOL}
    return worst


sizes = st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3))
fd_sizes = st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 2), st.integers(1, 2))


# ---------------------------------------------------------------- finite differences
@pytest.mark.parametrize("variant", FD_VARIANTS, ids=variant_id)
@pytest.mark.parametrize("kind", KINDS)
def test_model_vs_finite_differences(kind, variant, error_log):
    err = fd_error(kind, variant, T=2, B=2, I=2, H=2)
    error_log.add(kind, "fd", err)
    assert err < FD_TOL


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=3)
@given(tbih=fd_sizes, variant=st.sampled_from(VARIANTS), seed=st.integers(0, 2 ** 16))
def test_model_vs_finite_differences_drawn_sizes(kind, tbih, variant, seed, error_log):
    err = fd_error(kind, variant, *tbih, seed=seed)
    error_log.add(kind, "fd", err)
    assert err < FD_TOL


# ---------------------------------------------------------------- PyTorch parity
@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("kind", KINDS)
def test_model_vs_torch(kind, variant, direction, error_log):
    error_log.add(kind, "torch", torch_error(kind, variant, T=4, B=2, I=3, H=2,
                                             direction=direction))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=10)
@given(tbih=sizes, variant=st.sampled_from(VARIANTS), seed=st.integers(0, 2 ** 16),
       direction=st.sampled_from(["torch->ours", "ours->torch"]))
def test_model_vs_torch_drawn_sizes(kind, tbih, variant, seed, direction, error_log):
    error_log.add(kind, "torch", torch_error(kind, variant, *tbih, seed=seed, direction=direction))


def test_reset_after_flag_changes_the_model():
    # The two GRU forms share parameters but not equations: the comparison above must be able
    # to tell them apart.
    ours = make_ours("GRU", 3, 2, (1, False, False, True))
    cho = make_ours("GRU reset_after=False", 3, 2, (1, False, False, True))
    cho.load_state_dict(ours.state_dict())
    xs = np.random.default_rng(0).standard_normal((4, 2, 3))
    h0 = np.full((1, 2, 2), 0.7)
    assert rel_err(ours(xs, h0)[0].data, cho(xs, h0)[0].data) > 1e-3


def test_default_initial_state_is_zeros_like_torch():
    tm = torch.nn.LSTM(3, 2, num_layers=2, dtype=torch.float64)
    ours = gg.LSTM(3, 2, num_layers=2, dtype=np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    xs = np.random.default_rng(1).standard_normal((5, 2, 3))
    out, (h, c) = ours(xs)
    t_out, (t_h, t_c) = tm(torch.from_numpy(xs))
    for a, b in [(out, t_out), (h, t_h), (c, t_c)]:
        assert rel_err(a.data, b.detach().numpy()) < TORCH_TOL


def test_float32_model_keeps_float32():
    m = gg.GRU(3, 2, dtype=np.float32)
    out, h = m(np.ones((2, 1, 3), np.float32))
    assert out.dtype == np.float32 and h.dtype == np.float32
    out.sum().backward()
    assert all(p.grad.dtype == np.float32 for p in m.parameters().values())
    with pytest.raises(TypeError, match="float32"):
        m(np.ones((2, 1, 3)))                      # float64 input to a float32 model
    # a Tensor too is named and refused before any op (it failed inside matmul)
    with pytest.raises(TypeError, match="GRU input: expected float32 data, got float64"):
        m(gg.Tensor(np.ones((2, 1, 3))))


def test_bad_states_and_empty_sequences_are_named():
    lstm, rnn = gg.LSTM(3, 4), gg.RNN(3, 4)
    xs, h = np.ones((2, 1, 3), np.float32), np.zeros((1, 1, 4), np.float32)
    with pytest.raises(TypeError, match=r"a tuple \(h0, c0\), got a tuple of 3"):
        lstm(xs, (h, h, h))
    with pytest.raises(TypeError, match="one array h0, got a tuple of 2"):
        rnn(xs, (h, h))
    with pytest.raises(TypeError, match=r"a tuple \(h0, c0\), got a list of 2"):
        lstm(xs, [h, h])
    with pytest.raises(ValueError, match=r"\(T, B, 3\) with T >= 1, got \[0, 1, 3\]"):
        lstm(np.ones((0, 1, 3), np.float32))
    with pytest.raises(ValueError, match=r"T >= 1"):
        gg.Recurrent(lambda p, x, h: (h, h), {})(np.ones((0, 1, 3)), np.zeros((1, 4)))


# ---------------------------------------------------------------- cells
CELLS = {"RNNCell tanh": (lambda I, H, bias: gg.RNNCell(I, H, nonlinearity="tanh", bias=bias,
                                                        dtype=np.float64),
                          lambda I, H, bias: torch.nn.RNNCell(I, H, bias, "tanh",
                                                              dtype=torch.float64)),
         "RNNCell relu": (lambda I, H, bias: gg.RNNCell(I, H, nonlinearity="relu", bias=bias,
                                                        dtype=np.float64),
                          lambda I, H, bias: torch.nn.RNNCell(I, H, bias, "relu",
                                                              dtype=torch.float64)),
         "LSTMCell": (lambda I, H, bias: gg.LSTMCell(I, H, bias=bias, dtype=np.float64),
                      lambda I, H, bias: torch.nn.LSTMCell(I, H, bias, dtype=torch.float64)),
         "GRUCell": (lambda I, H, bias: gg.GRUCell(I, H, bias=bias, dtype=np.float64),
                     lambda I, H, bias: torch.nn.GRUCell(I, H, bias, dtype=torch.float64))}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_vs_torch_cell(name, bias, error_log):
    I, H, B = 3, 4, 2
    torch.manual_seed(3)
    ours, tc = CELLS[name][0](I, H, bias), CELLS[name][1](I, H, bias)
    assert set(ours.parameters()) == set(tc.state_dict())
    for k, p in ours.parameters().items():
        p.data = tc.state_dict()[k].numpy().copy()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, I))
    lstm = name == "LSTMCell"
    states = [rng.standard_normal((B, H)) for _ in range(2 if lstm else 1)]
    gx, gs = gg.Tensor(x, requires_grad=True), [gg.Tensor(s, requires_grad=True) for s in states]
    tx, ts = torch.tensor(x, requires_grad=True), [torch.tensor(s, requires_grad=True)
                                                    for s in states]
    new = ours(gx, tuple(gs) if lstm else gs[0])
    t_new = tc(tx, tuple(ts) if lstm else ts[0])
    new, t_new = (list(new), list(t_new)) if lstm else ([new], [t_new])
    projs = [rng.standard_normal((B, H)) for _ in new]
    sum((n * p).sum() for n, p in zip(new, projs)).backward()
    sum((n * torch.from_numpy(p)).sum() for n, p in zip(t_new, projs)).backward()
    pairs = [(a.data, b.detach().numpy()) for a, b in zip(new, t_new)]
    pairs += [(gx.grad, tx.grad.numpy())] + [(a.grad, b.grad.numpy()) for a, b in zip(gs, ts)]
    tp = dict(tc.named_parameters())
    pairs += [(p.grad, tp[k].grad.numpy()) for k, p in ours.parameters().items()]
    worst = max(rel_err(a, b) for a, b in pairs)
    error_log.add(name, "torch", worst)
    assert worst < TORCH_TOL
    # and vs finite differences
    names = ["h", "c"][:len(states)]

    def fn(x, h, c=None, **w):
        ours.params.update(w)
        out = ours(x, (h, c) if lstm else h)
        return gg.concat([o.reshape(-1) for o in (out if lstm else (out,))])
    report = gg.gradcheck(fn, {"x": x, **dict(zip(names, states)),
                               **{k: p.data for k, p in ours.parameters().items()}},
                          rtol=FD_TOL, atol=0.0)
    error_log.add(name, "fd", report.max_rel_err)


# ---------------------------------------------------------------- Recurrent with a custom step
def leaky_step(p, x, state):
    """A custom two-part state: h is an Elman unit, m a leaky average of h^2 gating the output."""
    h, m = state
    h = gg.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"])
    m = 0.5 * m + h * h
    return h * gg.sigmoid(m), (h, m)


def leaky_torch(p, xs, h, m, reverse):
    ys = [None] * xs.shape[0]
    for t in (reversed(range(xs.shape[0])) if reverse else range(xs.shape[0])):
        h = torch.tanh(xs[t] @ p["Wx"] + h @ p["Wh"] + p["b"])
        m = 0.5 * m + h * h
        ys[t] = h * torch.sigmoid(m)
    return torch.stack(ys), h, m


@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_custom_step(reverse, error_log):
    rng = np.random.default_rng(5)
    T, B, I, H = 4, 2, 3, 3
    arrays = {"Wx": rng.standard_normal((I, H)) * 0.5, "Wh": rng.standard_normal((H, H)) * 0.5,
              "b": rng.standard_normal(H) * 0.1, "xs": rng.standard_normal((T, B, I)),
              "h0": rng.standard_normal((B, H)), "m0": np.abs(rng.standard_normal((B, H)))}

    def fn(Wx, Wh, b, xs, h0, m0):
        model = gg.Recurrent(leaky_step, {"Wx": Wx, "Wh": Wh, "b": b}, reverse=reverse)
        ys, (h, m) = model(xs, (h0, m0))
        return gg.concat([ys.reshape(-1), h.reshape(-1), m.reshape(-1)])

    report = gg.gradcheck(fn, arrays, rtol=FD_TOL, atol=0.0)
    error_log.add("Recurrent(custom step)", "fd", report.max_rel_err)

    ts = {k: gg.Tensor(v, requires_grad=True) for k, v in arrays.items()}
    th = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    out = fn(**ts)
    t_ys, t_h, t_m = leaky_torch(th, th["xs"], th["h0"], th["m0"], reverse)
    t_out = torch.cat([t_ys.reshape(-1), t_h.reshape(-1), t_m.reshape(-1)])
    proj = rng.standard_normal(out.shape)
    (out * proj).sum().backward()
    (t_out * torch.from_numpy(proj)).sum().backward()
    errs = [rel_err(out.data, t_out.detach().numpy())]
    errs += [rel_err(ts[k].grad, th[k].grad.numpy()) for k in arrays]
    error_log.add("Recurrent(custom step)", "torch", max(errs))
    assert max(errs) < TORCH_TOL
    # the model's parameters() are the tensors it was given, and they received gradients
    params = {k: ts[k] for k in ("Wx", "Wh", "b")}
    assert gg.Recurrent(leaky_step, params).parameters() == params


def test_recurrent_copies_arrays_and_keeps_tensors():
    # regression: the caller's arrays were the parameters, so two models built from one dict
    # (or an optimizer step on one) changed the other's weights
    arrays = {"Wx": np.ones((2, 2)), "Wh": np.eye(2), "b": np.zeros(2)}
    a, b = gg.Recurrent(leaky_step, arrays), gg.Recurrent(leaky_step, arrays)
    a.parameters()["Wx"].data += 1.0
    assert b.parameters()["Wx"].data[0, 0] == 1.0 and arrays["Wx"][0, 0] == 1.0
    shared = gg.Tensor(np.eye(2), requires_grad=True)
    c = gg.Recurrent(leaky_step, {**arrays, "Wh": shared})
    assert c.parameters()["Wh"] is shared


def test_recurrent_wraps_arrays_as_trainable_params():
    model = gg.Recurrent(leaky_step, {"Wx": np.ones((2, 2)), "Wh": np.eye(2), "b": np.zeros(2)})
    ys, (h, m) = model(np.ones((3, 1, 2)), (np.zeros((1, 2)), np.zeros((1, 2))))
    assert ys.shape == (3, 1, 2)
    ys.sum().backward()
    assert all(p.requires_grad and p.grad is not None for p in model.parameters().values())
    with pytest.raises(ValueError, match="Recurrent"):
        model(np.ones(3), (np.zeros((1, 2)), np.zeros((1, 2))))


# ---------------------------------------------------------------- state_dict and input errors
def test_state_dict_round_trip_and_names():
    m = gg.LSTM(3, 2, num_layers=2, bidirectional=True, dtype=np.float64)
    t = torch.nn.LSTM(3, 2, num_layers=2, bidirectional=True, dtype=torch.float64)
    sd = m.state_dict()
    assert list(sd) == list(t.state_dict())        # same names in the same order
    assert all(sd[k].shape == tuple(v.shape) for k, v in t.state_dict().items())
    sd["weight_hh_l1_reverse"][0, 0] = 42.0
    assert m.state_dict()["weight_hh_l1_reverse"][0, 0] != 42.0   # state_dict is a copy
    m.load_state_dict(sd)
    assert m.state_dict()["weight_hh_l1_reverse"][0, 0] == 42.0
    m2 = gg.LSTM(3, 2, num_layers=2, bidirectional=True, dtype=np.float64, seed=9)
    m2.load_state_dict(t.state_dict())             # torch tensors are accepted as well
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[k], v.numpy())


def test_load_state_dict_errors():
    m = gg.GRU(3, 2, dtype=np.float64)
    good = m.state_dict()
    with pytest.raises(KeyError, match=r"missing \['bias_hh_l0'\]"):
        m.load_state_dict({k: v for k, v in good.items() if k != "bias_hh_l0"})
    with pytest.raises(KeyError, match=r"unexpected \['weight_ih_l1'\]"):
        m.load_state_dict({**good, "weight_ih_l1": good["weight_ih_l0"]})
    with pytest.raises(ValueError, match=r"weight_hh_l0.*\[6, 3\].*\[6, 2\]"):
        m.load_state_dict({**good, "weight_hh_l0": np.zeros((6, 3))})
    with pytest.raises(TypeError, match=r"bias_ih_l0.*float32.*float64"):
        m.load_state_dict({**good, "bias_ih_l0": good["bias_ih_l0"].astype(np.float32)})
    before = m.state_dict()
    with pytest.raises(KeyError):
        m.load_state_dict({})
    for k, v in before.items():
        np.testing.assert_array_equal(m.state_dict()[k], v)


@pytest.mark.parametrize("make, xs, state, exc, match", [
    (lambda: gg.RNN(3, 2, dtype=np.float64), np.zeros((4, 3)), None, ValueError,
     r"\(T, B, 3\).*\[4, 3\]"),
    (lambda: gg.RNN(3, 2, dtype=np.float64), np.zeros((4, 1, 5)), None, ValueError, r"\[4, 1, 5\]"),
    (lambda: gg.GRU(3, 2, batch_first=True, dtype=np.float64), np.zeros((4, 3)), None, ValueError,
     "batch_first"),
    (lambda: gg.RNN(3, 2, num_layers=2, dtype=np.float64), np.zeros((4, 1, 3)), np.zeros((1, 1, 2)),
     ValueError, r"\[1, 1, 2\].*\[2, 1, 2\]"),
    (lambda: gg.GRU(3, 2, bidirectional=True, dtype=np.float64), np.zeros((4, 2, 3)),
     np.zeros((2, 1, 2)), ValueError, r"expected \[2, 2, 2\]"),
    (lambda: gg.LSTM(3, 2, dtype=np.float64), np.zeros((4, 1, 3)), np.zeros((1, 1, 2)), TypeError,
     r"tuple \(h0, c0\)"),
    (lambda: gg.GRU(3, 2, dtype=np.float64), np.zeros((4, 1, 3)),
     (np.zeros((1, 1, 2)), np.zeros((1, 1, 2))), TypeError, "one array h0"),
    (lambda: gg.LSTM(3, 2, dtype=np.float64), np.zeros((4, 1, 3)),
     (np.zeros((1, 1, 2)), np.zeros((1, 1, 3))), ValueError, r"\[1, 1, 3\]"),
    (lambda: gg.RNN(3, 2, dtype=np.float64), np.zeros((4, 1, 3), np.float32), None, TypeError,
     "float32"),
])
def test_bad_inputs(make, xs, state, exc, match):
    with pytest.raises(exc, match=match):
        make()(xs, state)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: gg.RNN(3, 2, nonlinearity="sigmoid"), ValueError, "nonlinearity"),
    (lambda: gg.LSTM(3, 0), ValueError, "hidden_size"),
    (lambda: gg.GRU(0, 2), ValueError, "input_size"),
    (lambda: gg.GRU(3, 2, num_layers=1.5), ValueError, "num_layers"),
    (lambda: gg.LSTM(3, 2, dtype=np.int32), TypeError, "dtype"),
])
def test_bad_constructor_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
