"""One BPTT training step (forward over T steps + backward, every gradient) for each peer.

Each `make_*` returns a zero-argument callable that runs one step, or raises ImportError when the
peer is not installed. All peers see the same weights, inputs and output cotangent, and the same
workload: out = model(xs, h0); grads of sum(out * d_out) w.r.t. weights, xs and h0. A step returns
whatever holds its gradients (no copies inside the timing); `gradients` reads them out in one
layout, so the benchmark can check that every peer computed the same thing before timing it.
"""
from __future__ import annotations

import numpy as np

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def problem(cell, B, I, H, T, seed=0, dtype=np.float32):
    import graphgrad as gg
    model = gg.make_rnn(cell, I, H, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, B, I)).astype(dtype)
    d_out = rng.standard_normal((T, B, H)).astype(dtype)
    return model, xs, d_out


def flops(cell, B, I, H, T):
    """Matmul FLOPs of forward + backward (forward 1x, backward 2x: input and weight grads)."""
    G = GATES[cell]
    return 3 * 2 * T * B * (I + H) * G * H


def make_compiled(model, xs, d_out, threads=1):
    import compiler
    T, B, _ = xs.shape
    prog = compiler.compile(model, seq_len=T, batch=B, threads=threads)
    state0 = model.init_state(B)
    zero_T = (tuple(np.zeros_like(s) for s in state0) if isinstance(state0, tuple)
              else np.zeros_like(state0))
    return lambda: prog.vjp(xs, state0, d_out, zero_T)


def lstm_four_matrices(p, x, state):
    """The LSTM step as a user writes it: one weight matrix per gate (the tests compile this same
    function to check that the four products are merged back into one)."""
    import graphgrad as gg
    h, c = state
    i = gg.sigmoid(x @ p["W_i"] + h @ p["U_i"] + p["b_i"])
    f = gg.sigmoid(x @ p["W_f"] + h @ p["U_f"] + p["b_f"])
    g = gg.tanh(x @ p["W_g"] + h @ p["U_g"] + p["b_g"])
    o = gg.sigmoid(x @ p["W_o"] + h @ p["U_o"] + p["b_o"])
    c = f * c + i * g
    h = o * gg.tanh(c)
    return h, (h, c)


def custom_lstm(model):
    """`model` (a gg.LSTM) as a gg.Recurrent over lstm_four_matrices, with the same weights."""
    import graphgrad as gg
    H = model.hidden_size
    sd = model.state_dict()
    p = {}
    for k, gate in enumerate("ifgo"):
        rows = slice(k * H, (k + 1) * H)
        p[f"W_{gate}"] = sd["weight_ih_l0"][rows].T.copy()
        p[f"U_{gate}"] = sd["weight_hh_l0"][rows].T.copy()
        p[f"b_{gate}"] = sd["bias_ih_l0"][rows] + sd["bias_hh_l0"][rows]
    return gg.Recurrent(lstm_four_matrices, p)


def make_compiled_custom(model, xs, d_out, threads=1):
    import compiler
    if model.mode != "lstm":
        raise ImportError("the custom-cell peer is the LSTM written as a step function")
    T, B, I = xs.shape
    H = model.hidden_size
    rec = custom_lstm(model)
    z = np.zeros((B, H), model.dtype)
    prog = compiler.compile(rec, seq_len=T, batch=B, input_size=I, state=(z, z), threads=threads)
    return lambda: prog.vjp(xs, (z, z), d_out, (z, z))


def make_tape(model, xs, d_out):
    import graphgrad as gg

    def step():
        model.zero_grad()
        x = gg.Tensor(xs, requires_grad=True)
        out, _ = model(x)
        out.backward(d_out)
        return model.parameters(), x
    return step


def _torch_dtype(model):
    import torch
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(model.dtype)]


def _torch_model(model):
    import torch
    cls = {"rnn_tanh": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[model.mode]
    tm = cls(model.input_size, model.hidden_size, dtype=_torch_dtype(model))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return tm


def make_torch(model, xs, d_out):
    import torch
    tm = _torch_model(model)
    x = torch.from_numpy(xs).requires_grad_()
    g = torch.from_numpy(d_out)

    def step():
        tm.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = tm(x)
        out.backward(g)
        return dict(tm.named_parameters()), x
    return step


def make_torch_loop(model, xs, d_out):
    """The same LSTM written as a custom cell in a Python loop: what users of custom cells pay."""
    import torch
    if model.mode != "lstm":
        raise ImportError("the Python-loop peer is the custom LSTM cell only")
    p = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in model.state_dict().items()}
    x = torch.from_numpy(xs).requires_grad_()
    g = torch.from_numpy(d_out)
    T, B, _ = xs.shape
    H = model.hidden_size

    def step():
        for t in p.values():
            t.grad = None
        h = torch.zeros(B, H, dtype=x.dtype)
        c = torch.zeros(B, H, dtype=x.dtype)
        outs = []
        for t in range(T):
            gates = x[t] @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T \
                + p["bias_hh_l0"]
            i, f, gg_, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg_)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        torch.stack(outs).backward(g)
        return p, x
    return step


def make_jax(model, xs, d_out):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", model.dtype == np.float64)
    p = {k[:-3]: jnp.asarray(v) for k, v in model.state_dict().items()}
    mode, H = model.mode, model.hidden_size

    def cell(p, carry, x):
        if mode == "lstm":
            h, c = carry
            i, f, g, o = jnp.split(x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T
                                   + p["bias_hh"], 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h
        if mode == "gru":
            h = carry
            xr, xz, xn = jnp.split(x @ p["weight_ih"].T + p["bias_ih"], 3, axis=-1)
            hr, hz, hn = jnp.split(h @ p["weight_hh"].T + p["bias_hh"], 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
            return h, h
        h = jnp.tanh(x @ p["weight_ih"].T + p["bias_ih"] + carry @ p["weight_hh"].T + p["bias_hh"])
        return h, h

    def loss(p, xs, d_out):
        B = xs.shape[1]
        h0 = jnp.zeros((B, H), xs.dtype)
        carry = (h0, h0) if mode == "lstm" else h0
        _, out = jax.lax.scan(lambda c, x: cell(p, c, x), carry, xs)
        return jnp.sum(out * d_out)

    g = jax.jit(jax.grad(loss, argnums=(0, 1)))
    xj, dj = jnp.asarray(xs), jnp.asarray(d_out)
    return lambda: jax.block_until_ready(g(p, xj, dj))


def gradients(peer, result, model):
    """{state_dict name: dL/dW, "xs": dL/dxs} in float64 from what peer's step returned."""
    def np64(a):
        a = a.detach().numpy() if hasattr(a, "detach") else a
        return np.asarray(a, np.float64)
    if peer == "compiled":
        grads, d_xs, _ = result
    elif peer == "compiled-custom":
        (g, d_xs, _), H = result, model.hidden_size
        # W_i = weight_ih_l0[rows].T, ..., b_i = bias_ih_l0[rows] + bias_hh_l0[rows]
        grads = {"weight_ih_l0": np.concatenate([g[f"W_{k}"].T for k in "ifgo"]),
                 "weight_hh_l0": np.concatenate([g[f"U_{k}"].T for k in "ifgo"]),
                 "bias_ih_l0": np.concatenate([g[f"b_{k}"] for k in "ifgo"])}
        grads["bias_hh_l0"] = grads["bias_ih_l0"]
    elif peer == "jax":
        g, d_xs = result
        grads = {k + "_l0": v for k, v in g.items()}
    else:   # tape, torch, torch-loop: (parameters by state_dict name, input), .grad on each
        params, x = result
        grads, d_xs = {k: p.grad for k, p in params.items()}, x.grad
    out = {k: np64(v) for k, v in grads.items()}
    out["xs"] = np64(d_xs)
    return out


def disagreement(a, b):
    """Largest relative difference between two `gradients` dicts: (error, name)."""
    worst = (0.0, "")
    for k in b:
        scale = max(float(np.linalg.norm(b[k])), 1e-30)
        worst = max(worst, (float(np.linalg.norm(a[k] - b[k])) / scale, k))
    return worst


PEERS = {"compiled": make_compiled, "compiled-custom": make_compiled_custom, "tape": make_tape,
         "torch": make_torch, "torch-loop": make_torch_loop, "jax": make_jax}
