"""Step functions of the standard cells, written in graphgrad primitives.

Each is `step(p, x_t, state) -> (y_t, new_state)` with `p` holding one layer-direction's
parameters under PyTorch's names without the layer suffix (weight_ih, weight_hh, bias_ih, bias_hh)
and PyTorch's layouts: weight_ih is (G*H, I), gates stacked in PyTorch's order. The same functions
run on the tape and are what the compiler traces.
"""
from __future__ import annotations

from .functional import split
from .ops import relu, sigmoid, tanh


def _affine(x, p, kind):
    y = x @ p[f"weight_{kind}"].T
    b = p.get(f"bias_{kind}")
    return y if b is None else y + b


def rnn_tanh_step(p, x, h):
    h = tanh(_affine(x, p, "ih") + _affine(h, p, "hh"))
    return h, h


def rnn_relu_step(p, x, h):
    h = relu(_affine(x, p, "ih") + _affine(h, p, "hh"))
    return h, h


def lstm_step(p, x, state):
    """Gates i, f, g, o (PyTorch order); c' = f*c + i*g, h' = o*tanh(c')."""
    h, c = state
    i, f, g, o = split(_affine(x, p, "ih") + _affine(h, p, "hh"), 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h = sigmoid(o) * tanh(c)
    return h, (h, c)


def gru_step(p, x, h):
    """PyTorch's GRU (reset gate applied after the recurrent matmul): gates r, z, n."""
    xr, xz, xn = split(_affine(x, p, "ih"), 3, axis=-1)
    hr, hz, hn = split(_affine(h, p, "hh"), 3, axis=-1)
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    n = tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return h, h


def gru_reset_before_step(p, x, h):
    """Cho et al. (2014): the reset gate scales h before it meets the candidate's weights."""
    xr, xz, xn = split(_affine(x, p, "ih"), 3, axis=-1)
    w_r, w_z, w_n = split(p["weight_hh"], 3, axis=0)
    b = p.get("bias_hh")
    b_r, b_z, b_n = split(b, 3, axis=0) if b is not None else (0.0, 0.0, 0.0)
    r = sigmoid(xr + h @ w_r.T + b_r)
    z = sigmoid(xz + h @ w_z.T + b_z)
    n = tanh(xn + (r * h) @ w_n.T + b_n)
    h = (1.0 - z) * n + z * h
    return h, h


GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
