"""Optimizers, gradient clipping and init helpers, against explicit formulas and torch.optim."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from graphgrad import init, optim


class P:
    """Stand-in for a graphgrad Tensor: just .data and .grad."""

    def __init__(self, data, grad=None):
        self.data, self.grad = np.array(data, dtype=np.float64), grad


def grads_for(step, shape, seed=0):
    return np.random.default_rng(seed * 1000 + step).standard_normal(shape)


# ---- hand-computed updates -------------------------------------------------------------------

def test_sgd_plain_and_weight_decay():
    p = P([1.0, -2.0])
    opt = optim.SGD({"w": p}, lr=0.1, weight_decay=0.5)
    p.grad = np.array([0.5, 1.0])
    opt.step()
    # p - lr * (g + wd * p)
    np.testing.assert_allclose(p.data, [1.0 - 0.1 * (0.5 + 0.5), -2.0 - 0.1 * (1.0 - 1.0)])


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_three_steps(nesterov):
    p = P([1.0, 2.0])
    opt = optim.SGD({"w": p}, lr=0.1, momentum=0.9, nesterov=nesterov)
    w, buf = np.array([1.0, 2.0]), None
    for k in range(3):
        g = grads_for(k, 2)
        p.grad = g.copy()
        opt.step()
        buf = g if buf is None else 0.9 * buf + g
        w = w - 0.1 * ((g + 0.9 * buf) if nesterov else buf)
        np.testing.assert_allclose(p.data, w, rtol=1e-14)


def test_adagrad_three_steps():
    p = P([0.3, -0.7, 1.2])
    opt = optim.Adagrad({"w": p}, lr=0.5, eps=1e-10)
    w, acc = p.data.copy(), np.zeros(3)
    for k in range(3):
        g = grads_for(k, 3)
        p.grad = g
        opt.step()
        acc = acc + g * g
        w = w - 0.5 * g / (np.sqrt(acc) + 1e-10)
        np.testing.assert_allclose(p.data, w, rtol=1e-14)
    assert opt.state["w"]["step"] == 3


def test_adam_three_steps():
    p = P([[0.3, -0.7], [1.2, 0.0]])
    lr, b1, b2, eps = 1e-2, 0.8, 0.95, 1e-6
    opt = optim.Adam({"w": p}, lr=lr, betas=(b1, b2), eps=eps)
    w, m, v = p.data.copy(), np.zeros((2, 2)), np.zeros((2, 2))
    for t in range(1, 4):
        g = grads_for(t, (2, 2))
        p.grad = g
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        w = w - lr * mhat / (np.sqrt(vhat) + eps)
        np.testing.assert_allclose(p.data, w, rtol=1e-12)


def test_adam_first_step_is_lr_times_sign():
    # with bias correction and tiny eps, Adam's first step has size lr in every coordinate
    p = P([1.0, 1.0, 1.0])
    opt = optim.Adam({"w": p}, lr=0.01, eps=1e-12)
    p.grad = np.array([3.0, -0.002, 40.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.99, 1.01, 0.99], rtol=1e-9)


def test_float32_param_stays_float32_and_in_place():
    data = np.ones(4, dtype=np.float32)
    p = P(0)
    p.data = data
    opt = optim.Adam({"w": p}, lr=0.1)
    p.grad = np.ones(4, dtype=np.float64)
    with pytest.raises(TypeError, match="gradient of 'w' is float64 but the parameter is float32"):
        opt.step()  # no silent downcast
    p.grad = np.ones(4, dtype=np.float32)
    opt.step()
    assert p.data is data and data.dtype == np.float32
    assert opt.state["w"]["exp_avg"].dtype == np.float32


def test_params_without_grad_are_skipped_and_zero_grad():
    a, b = P([1.0]), P([2.0])
    opt = optim.Adam({"a": a, "b": b}, lr=0.1)
    a.grad = np.array([1.0])
    opt.step()
    assert b.data[0] == 2.0 and opt.state["b"] == {} and opt.state["a"]["step"] == 1
    opt.zero_grad(set_to_none=False)
    assert a.grad[0] == 0.0 and b.grad is None
    opt.zero_grad()
    assert a.grad is None


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=-0.1),
                                  lambda ps: optim.Adagrad(ps, lr=-1.0),
                                  lambda ps: optim.Adam(ps, lr=float("nan")),
                                  lambda ps: optim.Adam(ps, betas=(1.0, 0.9)),
                                  lambda ps: optim.SGD(ps, lr=0.1, nesterov=True)])
def test_bad_hyperparameters(make):
    with pytest.raises(ValueError, match="SGD|Adagrad|Adam"):
        make({"w": P([1.0])})


def test_grad_shape_mismatch_names_optimizer_param_and_shapes():
    p = P(np.zeros((4, 4)))
    opt = optim.Adam({"weight_hh_l0": p})
    p.grad = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"Adam.*'weight_hh_l0'.*\(3, 4\).*\(4, 4\)"):
        opt.step()


def test_bad_params():
    with pytest.raises(ValueError, match="SGD.*non-empty dict"):
        optim.SGD([P([1.0])], lr=0.1)
    int_param = P(0)
    int_param.data = np.arange(3)
    with pytest.raises(ValueError, match="'w'.*floating"):
        optim.SGD({"w": int_param}, lr=0.1)


def test_load_state_dict_rejects_other_optimizer_and_params():
    p = P([1.0])
    sd = optim.SGD({"w": p}, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="Adam.*SGD"):
        optim.Adam({"w": p}).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"missing \['v'\].*unexpected \['w'\]"):
        optim.SGD({"v": p}, lr=0.1).load_state_dict(sd)


# ---- state_dict round trip ------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.Adagrad(ps, lr=0.1),
                                  lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1)])
def test_state_dict_resume_is_exact(make):
    """Training 2 steps, saving, and resuming in a fresh optimizer equals 4 uninterrupted steps."""
    def run(p, opt, steps):
        for k in steps:
            p.grad = grads_for(k, (3, 2))
            opt.step()

    p1 = P(np.ones((3, 2)))
    o1 = make({"w": p1})
    run(p1, o1, range(4))

    p2 = P(np.ones((3, 2)))
    o2 = make({"w": p2})
    run(p2, o2, range(2))
    sd = o2.state_dict()
    p3 = P(p2.data.copy())
    o3 = make({"w": p3})
    o3.load_state_dict(sd)
    run(p2, o2, [])  # the saved dict must not alias the live state
    run(p3, o3, range(2, 4))
    np.testing.assert_array_equal(p3.data, p1.data)
    assert o3.state_dict()["hyper"] == o1.state_dict()["hyper"]


# ---- clipping --------------------------------------------------------------------------------

def test_clip_grad_norm_global():
    a, b = P([0.0, 0.0]), P([0.0])
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    total = optim.clip_grad_norm({"a": a, "b": b}, max_norm=1.0)
    assert total == 5.0
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(a.grad, [3 * coef, 0.0])
    np.testing.assert_allclose(b.grad, [4 * coef])


def test_clip_grad_norm_leaves_small_grads_and_accepts_arrays():
    g = [np.array([0.3, 0.4])]
    assert optim.clip_grad_norm(g, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g[0], [0.3, 0.4])
    assert optim.clip_grad_norm({"x": P([1.0])}, 1.0) == 0.0  # no grads at all
    for bad in (0, -1.0, -np.inf):   # 0 divided by zero, -inf gave 1.0 (torch: 0)
        with pytest.raises(ValueError, match="clip_grad_norm: norm_type must be > 0"):
            optim.clip_grad_norm(g, 1.0, norm_type=bad)


def test_clip_grad_value():
    p = P([0.0] * 3)
    p.grad = np.array([-5.0, 0.2, 7.0])
    optim.clip_grad_value([p], 1.0)
    np.testing.assert_array_equal(p.grad, [-1.0, 0.2, 1.0])
    with pytest.raises(ValueError, match="clip_grad_value"):
        optim.clip_grad_value([p], -1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=4),
       st.floats(0.01, 10.0), st.integers(0, 2 ** 16))
def test_clip_grad_norm_property(shapes, max_norm, seed):
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(s) * rng.uniform(0.1, 10) for s in shapes]
    before = [g.copy() for g in grads]
    total = optim.clip_grad_norm(grads, max_norm)
    assert total == pytest.approx(math.sqrt(sum((g ** 2).sum() for g in before)))
    after = math.sqrt(sum((g ** 2).sum() for g in grads))
    assert after <= max_norm + 1e-9
    if total <= max_norm:
        for g, g0 in zip(grads, before):
            np.testing.assert_array_equal(g, g0)
    else:  # one common factor for every parameter: directions are kept
        ratio = grads[0].ravel()[0] / before[0].ravel()[0]
        for g, g0 in zip(grads, before):
            np.testing.assert_allclose(g, ratio * g0, rtol=1e-12)


# ---- against torch.optim ------------------------------------------------------------------------

TORCH_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("Adagrad", dict(lr=0.1, eps=1e-10)),
    ("Adagrad", dict(lr=0.1, eps=1e-6, weight_decay=0.1, lr_decay=0.01,
                     initial_accumulator_value=0.1)),
    ("Adam", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8)),
    ("Adam", dict(lr=3e-3, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.05)),
]


@pytest.mark.parametrize("name,kw", TORCH_CASES)
def test_matches_torch_float64(name, kw):
    torch = pytest.importorskip("torch")
    shapes = {"weight_hh_l0": (8, 2), "bias_hh_l0": (8,)}
    rng = np.random.default_rng(1)
    ours = {n: P(rng.standard_normal(s)) for n, s in shapes.items()}
    theirs = {n: torch.tensor(p.data.copy(), requires_grad=True) for n, p in ours.items()}
    opt = getattr(optim, name)(ours, **kw)
    topt = getattr(torch.optim, name)(list(theirs.values()), **kw)
    for k in range(6):
        for n in shapes:
            g = rng.standard_normal(shapes[n]) * (10.0 if k == 2 else 1.0)
            ours[n].grad = g
            theirs[n].grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
        for n in shapes:
            np.testing.assert_allclose(ours[n].data, theirs[n].detach().numpy(),
                                       rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kw", TORCH_CASES)
def test_zero_dim_parameter_matches_torch(name, kw):
    # regression: with weight_decay, g + wd * p of a 0-d parameter is a numpy scalar, so SGD's
    # momentum buffer was a scalar too and its in-place update never reached the stored state
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    ours = P(rng.standard_normal(()))
    theirs = torch.tensor(ours.data.copy(), requires_grad=True)
    opt = getattr(optim, name)({"scale": ours}, **kw)
    topt = getattr(torch.optim, name)([theirs], **kw)
    for _ in range(6):
        g = np.array(rng.standard_normal())
        ours.grad, theirs.grad = g, torch.tensor(g.copy())
        opt.step()
        topt.step()
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert all(isinstance(v, np.ndarray) for v in opt.state["scale"].values()
               if not isinstance(v, int))


def test_clip_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal((5, 3)) * 3, rng.standard_normal(7)]
    ts = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(ts, grads):
        t.grad = torch.tensor(g.copy())
    for norm_type in (2.0, math.inf, 1.0):
        ours = [g.copy() for g in grads]
        for t, g in zip(ts, grads):
            t.grad = torch.tensor(g.copy())
        total = optim.clip_grad_norm(ours, 2.0, norm_type=norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(ts, 2.0, norm_type=norm_type)
        assert total == pytest.approx(float(ttotal), rel=1e-12)
        for g, t in zip(ours, ts):
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)


# ---- init (kept here: init helpers have no test file of their own) -------------------------------

def test_uniform_bound_and_dtype_independence():
    a32, a64 = np.empty((64, 16), np.float32), np.empty((64, 16))
    init.uniform_(a32, init.rnn_bound(16), 0)
    init.uniform_(a64, init.rnn_bound(16), 0)
    assert np.abs(a64).max() <= 0.25 and np.abs(a64).max() > 0.2
    np.testing.assert_array_equal(a32, a64.astype(np.float32))


@pytest.mark.parametrize("shape,blocks", [((16, 16), 1), ((64, 16), 4), ((12, 4), 3),
                                          ((5, 9), 1), ((9, 5), 1)])
def test_orthogonal_blocks(shape, blocks):
    w = init.orthogonal(shape, gain=2.0, rng=0)
    assert w.shape == shape
    h = shape[0] // blocks
    for b in range(blocks):
        q = w[b * h:(b + 1) * h] / 2.0
        small = min(q.shape)
        gram = q @ q.T if q.shape[0] == small else q.T @ q
        np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)


def test_orthogonal_whole_matrix_when_asked():
    w = init.orthogonal((12, 4), rng=0, blocks=1)
    np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-12)
    assert not np.allclose(w[:4] @ w[:4].T, np.eye(4))
    with pytest.raises(ValueError, match="blocks"):
        init.orthogonal((10, 4), rng=0, blocks=3)


def test_forget_bias():
    b = np.zeros(4 * 3)
    init.forget_bias(b, 3, 1.0)
    np.testing.assert_array_equal(b, [0] * 3 + [1] * 3 + [0] * 6)
    with pytest.raises(ValueError, match=r"\(12,\).*\(9,\)"):
        init.forget_bias(np.zeros(9), 3)
